"""Placement: which tier answers a request, and why. Every routing rule lives
here, in the order docs/routing.md lists them; the router carries out what
these functions return.

Pure: no grpc, no vllm, no request context, no tier objects. A tier's state
comes in as two questions the caller answers (`why_not`: why it cannot take
a request now, or None; `busy`: why a request would wait past the spill
budget, or None). They are asked lazily, nearest tier first, because asking a
half-open circuit breaker hands out its one probe: only a tier this request
may really use is asked.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import SpillConfig
from ..errors import InvalidArgument, Unavailable


Ask = Callable[[str], "str | None"]


@dataclass(frozen=True)
class ByScore:
    """Rules 1-3: the tier the request's score (or its override) names."""

    index: int
    reason: str  # "override", "classifier" or "target_share"
    counts_in_window: bool  # the target share's window holds only the rule's own decisions


@dataclass(frozen=True)
class Moved:
    """Rules 6-8: the request goes to another tier than the one decided."""

    tier: str
    reason: str  # "load" (spill), "context" or "fallback"
    degraded: bool
    busy: str | None = None  # a spill's cause: one of SPILL_REASONS
    why: str = ""  # a fallback's cause: why the tier it leaves cannot serve


def by_score(p: float, cuts: Sequence[float], tiers: Sequence[str], *, route: str | None, own_threshold: bool,
             share_active: bool) -> ByScore:
    """Rule 1, a named tier; else rules 2-3, the score against the cut
    points (`cuts`: ascending, one fewer than the tiers, a request's own
    threshold already in them). A score at or above a cut goes up a tier."""
    if route is not None:
        return ByScore(tiers.index(route), "override", False)
    index = bisect.bisect_right(cuts, p)
    return ByScore(index, "target_share" if share_active and not own_threshold else "classifier", not own_threshold)


def by_session(index: int, reason: str, reached: int | None) -> int | None:
    """Rule 5, session affinity: a conversation that reached a more capable
    tier than its score names stays there (`reached`: the store's tier, None
    when it knows none). Only the score's own decisions move: a named tier
    is the caller's choice. None: the score's tier stands."""
    if reached is None or reason not in ("classifier", "target_share") or reached <= index:
        return None
    return reached


# The decisions after which a conversation has "reached" its tier: not a
# spill under load nor a fallback, which say nothing of what it needs.
REACHES = ("classifier", "target_share", "override", "session", "context")


def for_context(tiers: Sequence[str], name: str, tokens: int, max_lens: Sequence[int], tried: set[str]) -> Moved:
    """Rule 6, context escalation: a prompt of `tokens` (counted on tier
    `name`) that does not fit its context goes to the nearest tier whose
    context holds it, the more capable first at equal distance. Its tokens
    are counted again there (another tokenizer may count otherwise), so
    `tried` holds the tiers already found too small. INVALID_ARGUMENT,
    naming the largest context, when none can."""
    for other in fallback_order(tiers, name):
        if other not in tried and max_lens[tiers.index(other)] > tokens:
            return Moved(other, "context", False)
    largest = max(range(len(tiers)), key=lambda i: max_lens[i])
    raise InvalidArgument("messages", f"the prompt is {tokens} tokens; the largest context, tier {tiers[largest]}'s, "
                                      f"holds at most {max_lens[largest] - 1}")


def unscored(tiers: Sequence[str], route: str | None) -> int:
    """Rule 4, the classifier failed: the named tier, else the most capable
    one (the safe side for answer quality), marked degraded by the caller."""
    return tiers.index(route) if route is not None else len(tiers) - 1


def bounding_cut(cuts: Sequence[float], index: int) -> float:
    """The cut point that bounds tier `index` from below (the cheapest: the
    one above it), so a decision says which line its score was held to."""
    return cuts[max(index - 1, 0)]


def fallback_order(tiers: Sequence[str], name: str) -> list[str]:
    """The other tiers, nearest first; at equal distance the more capable
    one first (the safe side for answer quality)."""
    i = tiers.index(name)
    return [tiers[j] for j in sorted((j for j in range(len(tiers)) if j != i), key=lambda j: (abs(j - i), -j))]


def fall_back(tiers: Sequence[str], failed: str, why: str, *, why_not: Ask, enabled: bool) -> Moved:
    """Rule 8: the nearest tier that can serve, degraded; UNAVAILABLE, with
    every tier's reason, when none can."""
    reasons = [f"{failed}: {why}"]
    for other in fallback_order(tiers, failed):
        other_why = why_not(other) if enabled else "fallback disabled"
        if other_why is None:
            return Moved(other, "fallback", True, why=why)
        reasons.append(f"{other}: {other_why}")
    raise Unavailable("no tier can serve: " + "; ".join(reasons))


def spill(tiers: Sequence[str], chosen: str, p: float, cuts: Sequence[float], rule: SpillConfig, *, busy: Ask, why_not: Ask,
          fits: Callable[[str], bool]) -> Moved | None:
    """Rule 7: the chosen tier is busy, the score lies within the margin of
    the cut it just crossed (or just missed), and the neighbour on that side
    can start the request sooner and allows its sampling values (`fits`: a
    spill never shortens an answer). None: it stays."""
    cause = busy(chosen)
    if cause is None:
        return None
    i = tiers.index(chosen)
    candidates = []
    if rule.up and i + 1 < len(tiers) and p >= cuts[i] - rule.margin:
        candidates.append(tiers[i + 1])
    if rule.down and i > 0 and p < cuts[i - 1] + rule.margin:
        candidates.append(tiers[i - 1])
    for other in candidates:
        if why_not(other) is None and busy(other) is None and fits(other):
            return Moved(other, "load", False, cause)
    return None


def place(tiers: Sequence[str], chosen: str, reason: str, p: float, cuts: Sequence[float], *, own_threshold: bool, rule: SpillConfig,
          fallback: bool, why_not: Ask, busy: Ask, fits: Callable[[str], bool]) -> Moved | None:
    """Rules 7-8 for a decided request about to be admitted: a tier that
    cannot serve falls back; one that is busy may spill (only the score's
    own decisions: an override or a request's own threshold never moves).
    None: the decided tier answers."""
    why = why_not(chosen)
    if why is not None:
        return fall_back(tiers, chosen, why, why_not=why_not, enabled=fallback)
    if rule.enabled and reason in ("classifier", "target_share") and not own_threshold:
        return spill(tiers, chosen, p, cuts, rule, busy=busy, why_not=why_not, fits=fits)
    return None
