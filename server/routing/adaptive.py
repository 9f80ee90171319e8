"""Target share: the cut points move so that each tier above the cheapest
gets its configured share of the requests the classifier decides.

The window is the last N decisions (or the last S seconds of them): their
scores, and the tier each was sent to; its share is what is reported. Every
`update_every` decisions (or a hundredth of the window's seconds) each cut
point is set again, at the quantile of the recent scores that sends the
right share above it from now on, corrected for the current *regime*'s
decisions short of the target:

    the share wanted over the next H decisions (H = correction x window)
      = target + (decisions short of the target this regime) / H

where the account of decisions short (or over) forgets: each decision
counts less as it ages, with a time constant of one window (of
window_requests decisions), and none leaves it all at once.

A regime is the traffic since the mix last changed. A change is detected
when the last n decisions' share lies more than z binomial standard
deviations from what was wanted (CHANGE_TESTS: the cut no longer fits the
scores); the regime then starts afresh, and the quantile is taken over
those n decisions' scores and the ones after. So a share that drifts by chance
or slowly (a gradual mix change, the quantile lagging) is pulled back within
H decisions, and the window's share holds; but the decisions a sudden change
sent to the wrong tier before it was detected are not paid back: paying
them back later, as an earlier version did, pushed the cut to 0 or 1 for
hundreds of decisions and then swung the share the other way, so that
routing depended on when a question came, not on what it was.

Two bounds keep the cut inside the recent scores: the wanted share moves at
most MAX_CORRECTION of the way from the target towards 0 or 1, and a cut
moves at most MAX_STEP per update. A drift of up to `deadband` (half a
point) is left alone, so the cut does not chase every decision. `python -m benchmarks.target_share`
replays the labelled questions' real scores through this controller and
another revision's, with mixes that shift abruptly and gradually.

Pure: no grpc, no engines, no clock of its own (the caller passes `now`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections import deque
from typing import Sequence

log = logging.getLogger("triage.routing")

# The live cut moves on every update (the router_cut_point gauge has every
# value); a line is logged when it has moved this far from the value last
# logged, at most once per tenth of the window, so a busy router's log shows
# the drift without a line per request.
LOG_STEP = 0.05
LOGS_PER_WINDOW = 10
# A time window keeps at most this many decisions (the oldest go first), so
# memory stays bounded whatever the traffic.
MAX_WINDOW_ENTRIES = 200_000
# A change of mix: the last n decisions' share is more than z binomial
# standard deviations from the share wanted, for one of these (n, z). 4 sd:
# a false alarm about once in 160,000 decisions per test. 50 decisions find
# a big change within about 25 (all simple questions, then all complex); 200
# find a smaller one (30 % falling to 15 %) within about 150.
CHANGE_TESTS = ((50, 4.0), (200, 4.0))
# The wanted share moves at most this fraction of the way from the target
# towards 0 or 1 (at a 30 % target: 7.5 % to 82.5 %), and a cut at most
# MAX_STEP per update: the cut never pins at 0 or 1 while the scores spread.
MAX_CORRECTION = 0.75
MAX_STEP = 0.2


class ShareController:
    def __init__(self, tiers: Sequence[str], targets: Sequence[float] | None, start_cuts: Sequence[float], *,
                 window_requests: int = 1000, window_seconds: float | None = None, correction: float = 0.0625,
                 min_samples: int = 100, update_every: int | None = None, deadband: float = 0.005):
        """`tiers` cheapest first; `targets`: the share for each tier above
        the cheapest, or None to only watch the realised shares (the cuts
        never move); `start_cuts`: the cut points used until the window
        holds `min_samples` decisions."""
        if len(start_cuts) != len(tiers) - 1 or (targets is not None and len(targets) != len(tiers) - 1):
            raise ValueError("one target and one starting cut per tier above the cheapest")
        self.tiers = tuple(tiers)
        self.adjusting = targets is not None
        self.targets = tuple(float(t) for t in targets) if targets is not None else ()
        # The share of decisions that should land at or above tier j (j >= 1).
        self._at_or_above = [sum(self.targets[j - 1:]) for j in range(1, len(tiers))]
        self.window_requests = window_requests
        self.window_seconds = window_seconds
        self.correction = correction
        self.min_samples = min_samples
        self.deadband = deadband
        self.update_every = update_every or max(1, window_requests // 100)
        self.cuts = tuple(start_cuts)
        self.active = False  # the cuts are the controller's (not the starting ones)
        self._entries: deque[tuple[float, float, int, int]] = deque()  # (time, score, tier index, sequence), oldest first
        self._sorted: list[float] = []  # the window's scores, ascending
        self._counts = [0] * len(tiers)  # decisions per tier in the window
        self._seq = 0  # decisions recorded so far
        self._regime = 0  # the sequence number the current regime starts at
        self._scores_from = 0  # ... and its quantile's scores (just before the change was seen)
        # Decisions short of each cut's target this regime, the older ones
        # counting less (a time constant of one window, in decisions): no
        # decision ever leaves the account all at once. An account of the
        # window itself (the controller before this one) changes when a
        # decision leaves it, and a correction made for a decision is undone
        # when it leaves: the share rang at the window's period.
        self._deficit = [0.0] * (len(tiers) - 1)
        self._keep = math.exp(-1.0 / window_requests)
        self.changes = 0  # mix changes detected
        self._since_update = 0
        self._next_update_at = float("-inf")
        self._logged = tuple(start_cuts)
        self._since_log = 0

    @property
    def size(self) -> int:
        return len(self._entries)

    def window_shares(self) -> tuple[float, ...]:
        """The realised share of each tier over the window (0 when empty)."""
        n = len(self._entries)
        return tuple(c / n if n else 0.0 for c in self._counts)

    def record(self, score: float, tier_index: int, now: float) -> None:
        """A decision the controller's cuts made (or would have, before it is active)."""
        self._entries.append((now, score, tier_index, self._seq))
        self._seq += 1
        for j, wanted in enumerate(self._at_or_above, start=1):
            self._deficit[j - 1] = self._deficit[j - 1] * self._keep + wanted - (tier_index >= j)
        bisect.insort(self._sorted, score)
        self._counts[tier_index] += 1
        self._evict(now)
        self._since_update += 1
        self._since_log += 1
        due = (now >= self._next_update_at) if self.window_seconds is not None else (self._since_update >= self.update_every)
        if due and self.adjusting and len(self._entries) >= self.min_samples:
            self._update(now)

    def _drop_oldest(self) -> None:
        _, score, tier_index, _ = self._entries.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, score)]
        self._counts[tier_index] -= 1

    def _evict(self, now: float) -> None:
        if self.window_seconds is None:
            while len(self._entries) > self.window_requests:
                self._drop_oldest()
        else:
            oldest = now - self.window_seconds
            while self._entries and (self._entries[0][0] < oldest or len(self._entries) > MAX_WINDOW_ENTRIES):
                self._drop_oldest()

    def _since(self, seq: int) -> list[tuple]:
        """The window's decisions from sequence number `seq` on, oldest first."""
        newer = list(itertools.takewhile(lambda e: e[3] >= seq, reversed(self._entries)))
        newer.reverse()
        return newer

    def _changed(self) -> int:
        """The mix changed: the last n decisions of this regime sent a share
        too far from the wanted one to be chance. Returns that n, or 0."""
        for n, z in CHANGE_TESTS:
            if self._seq - self._regime < n or len(self._entries) < n:
                continue
            recent = list(itertools.islice(reversed(self._entries), n))
            for j, wanted in enumerate(self._at_or_above, start=1):
                share = sum(1 for e in recent if e[2] >= j) / n
                if abs(share - wanted) > z * math.sqrt(max(wanted * (1 - wanted), 1e-4) / n):
                    return n
        return 0

    def _update(self, now: float) -> None:
        self._since_update = 0
        if self.window_seconds is not None:
            self._next_update_at = now + self.window_seconds / 100
        seen_over = self._changed()
        if seen_over:
            self.changes += 1
            self._regime, self._scores_from = self._seq, self._seq - seen_over
            self._deficit = [0.0] * len(self._deficit)
            log.info("target share: the mix changed (the last %d decisions were far off the target): the cut follows the new scores "
                     "and the decisions before are not paid back", seen_over)
        scores = self._sorted if self._entries[0][3] >= self._scores_from else sorted(e[1] for e in self._since(self._scores_from))
        window = self.window_requests if self.window_seconds is None else len(self._entries)
        horizon = max(1.0, self.correction * window)
        band = self.deadband * window
        cuts = []
        for j, wanted in enumerate(self._at_or_above, start=1):
            deficit = self._deficit[j - 1]
            deficit = 0.0 if abs(deficit) <= band else deficit - band * (1 if deficit > 0 else -1)
            share = min(wanted + (1 - wanted) * MAX_CORRECTION, max(wanted * (1 - MAX_CORRECTION), wanted + deficit / horizon))
            cut = _quantile_cut(scores, share)
            if self.active:
                cut = min(self.cuts[j - 1] + MAX_STEP, max(self.cuts[j - 1] - MAX_STEP, cut))
            cuts.append(max(cut, cuts[-1]) if cuts else cut)  # ascending
        self.cuts = tuple(cuts)
        self.active = True
        self._log_change()

    def _log_change(self) -> None:
        if self._since_log < len(self._entries) / LOGS_PER_WINDOW or all(abs(a - b) < LOG_STEP for a, b in zip(self.cuts, self._logged)):
            return
        self._since_log = 0
        shares = self.window_shares()
        window = f"{self.window_seconds:g} s" if self.window_seconds is not None else f"{len(self._entries)} requests"
        for j, (old, new) in enumerate(zip(self._logged, self.cuts), start=1):
            if abs(old - new) >= LOG_STEP:
                log.info("target share: cut into %s %.3f -> %.3f (target %.3f, realised %.3f over the last %s)",
                         self.tiers[j], old, new, self.targets[j - 1], shares[j], window)
        self._logged = self.cuts


def _quantile_cut(ordered: list[float], share_above: float) -> float:
    """The cut that sends `share_above` of these scores (ascending) above it."""
    k = round(share_above * len(ordered))
    if k <= 0:
        return 1.0
    return ordered[len(ordered) - k]
