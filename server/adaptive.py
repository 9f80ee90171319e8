"""Target share: the cut points move so that each tier above the cheapest
gets its configured share of the requests the classifier decides.

The window is the last N decisions (or the last S seconds of them): their
scores, and the tier each was sent to. Every `update_every` decisions (or a
hundredth of the window's seconds) each cut point is set again, at the
quantile of the window's scores that would send the right share above it
from now on:

    the share wanted over the next H decisions (H = correction x window)
      = (target x the window H from now  -  the large decisions still in it)
        / H

So a share that has drifted (the mix changed, the quantile lags) is pulled
back within H decisions, and with no drift it is exactly the target's
quantile. A drift of up to `deadband` (half a point) is left alone: it keeps
the cut from chasing every decision, so it follows the scores' order more
closely. A small H tracks the target tightly but follows the order less
closely; `python -m benchmarks.target_share` measures both on the labelled
questions (docs/routing.md).

Pure: no grpc, no engines, no clock of its own (the caller passes `now`).
"""

from __future__ import annotations

import bisect
import itertools
import logging
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
        self._entries: deque[tuple[float, float, int]] = deque()  # (time, score, tier index), oldest first
        self._sorted: list[float] = []  # the window's scores, ascending
        self._counts = [0] * len(tiers)  # decisions per tier in the window
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
        self._entries.append((now, score, tier_index))
        bisect.insort(self._sorted, score)
        self._counts[tier_index] += 1
        self._evict(now)
        self._since_update += 1
        self._since_log += 1
        due = (now >= self._next_update_at) if self.window_seconds is not None else (self._since_update >= self.update_every)
        if due and self.adjusting and len(self._entries) >= self.min_samples:
            self._update(now)

    def _drop_oldest(self) -> None:
        _, score, tier_index = self._entries.popleft()
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

    def _leaving(self, now: float, horizon: int) -> list[tuple[float, float, int]]:
        """The decisions that leave the window over the next `horizon` ones
        (count window) or the next correction x window seconds (time
        window): the oldest, so only they are walked."""
        if self.window_seconds is None:
            return list(itertools.islice(self._entries, max(0, len(self._entries) + horizon - self.window_requests)))
        cutoff = now - self.window_seconds * (1.0 - self.correction)
        return list(itertools.takewhile(lambda entry: entry[0] < cutoff, self._entries))

    def _update(self, now: float) -> None:
        self._since_update = 0
        if self.window_seconds is not None:
            self._next_update_at = now + self.window_seconds / 100
        n = len(self._entries)
        horizon = max(1, round(self.correction * (self.window_requests if self.window_seconds is None else n)))
        leaving = self._leaving(now, horizon)
        staying = n - len(leaving)
        cuts = []
        for j, wanted in enumerate(self._at_or_above, start=1):
            still_above = sum(self._counts[j:]) - sum(1 for e in leaving if e[2] >= j)  # above the cut, and staying
            deficit = wanted * (staying + horizon) - still_above - wanted * horizon  # decisions short of the target
            band = self.deadband * (staying + horizon)
            deficit = 0.0 if abs(deficit) <= band else deficit - band * (1 if deficit > 0 else -1)
            share = wanted + deficit / horizon
            cut = self._quantile_cut(min(1.0, max(0.0, share)))
            cuts.append(max(cut, cuts[-1]) if cuts else cut)  # ascending
        self.cuts = tuple(cuts)
        self.active = True
        self._log_change()

    def _quantile_cut(self, share_above: float) -> float:
        """The cut that sends `share_above` of the window's scores above it."""
        ordered = self._sorted
        k = round(share_above * len(ordered))
        if k <= 0:
            return 1.0
        return ordered[len(ordered) - k]

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
