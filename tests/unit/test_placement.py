"""The routing rules on plain values (server/routing/placement.py). That they are
carried out on a served router: tests/service/test_spill.py,
test_status_codes.py and the integration tests."""

from __future__ import annotations

import pytest

from server.routing import placement
from server.config import SpillConfig
from server.errors import Unavailable

THREE = ("small", "medium", "large")
CUTS = (0.3, 0.7)
SPILL = SpillConfig(enabled=True, up=True, down=False, margin=0.1, queue_seconds=1.0)


def asked(answers: dict[str, str | None]):
    """A state question answered per tier, recording which tiers were asked."""
    calls: list[str] = []

    def ask(name: str):
        calls.append(name)
        return answers.get(name)

    return ask, calls


def test_by_score_names_the_tier_above_each_cut_and_the_rule():
    pick = lambda p, **kw: placement.by_score(p, CUTS, THREE, **{"route": None, "own_threshold": False, "share_active": False, **kw})
    assert [pick(p).index for p in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)] == [0, 0, 1, 1, 2, 2]  # at the cut goes up
    assert pick(0.5).reason == "classifier" and pick(0.5).counts_in_window
    assert pick(0.5, share_active=True).reason == "target_share"
    own = pick(0.5, share_active=True, own_threshold=True)  # a request's own threshold is not the rule's doing
    assert (own.reason, own.counts_in_window) == ("classifier", False)
    forced = pick(0.95, route="small")
    assert (forced.index, forced.reason, forced.counts_in_window) == (0, "override", False)
    assert placement.unscored(THREE, None) == 2 and placement.unscored(THREE, "medium") == 1
    assert placement.bounding_cut(CUTS, 0) == 0.3 and placement.bounding_cut(CUTS, 2) == 0.7


def test_fallback_takes_the_nearest_tier_more_capable_first_and_asks_no_further():
    assert placement.fallback_order(THREE, "medium") == ["large", "small"]
    assert placement.fallback_order(THREE, "small") == ["medium", "large"]
    why_not, calls = asked({"large": "circuit open"})
    moved = placement.fall_back(THREE, "medium", "engine failed", why_not=why_not, enabled=True)
    assert (moved.tier, moved.reason, moved.degraded, moved.why) == ("small", "fallback", True, "engine failed")
    assert calls == ["large", "small"]
    why_not, calls = asked({})
    placement.fall_back(THREE, "small", "x", why_not=why_not, enabled=True)
    assert calls == ["medium"]  # a half-open breaker further away keeps its probe


def test_no_tier_that_can_serve_is_unavailable_naming_every_reason():
    why_not, _ = asked({"small": "engine not ready", "large": "circuit open"})
    with pytest.raises(Unavailable, match="no tier can serve: medium: engine failed; large: circuit open; small: engine not ready"):
        placement.fall_back(THREE, "medium", "engine failed", why_not=why_not, enabled=True)
    why_not, calls = asked({})
    with pytest.raises(Unavailable, match="fallback disabled"):
        placement.fall_back(THREE, "medium", "engine failed", why_not=why_not, enabled=False)
    assert calls == []


def place(p, chosen="medium", reason="classifier", rule=SPILL, own_threshold=False, why_not=None, busy=None, fits=lambda name: True):
    return placement.place(THREE, chosen, reason, p, CUTS, own_threshold=own_threshold, rule=rule, fallback=True,
                           why_not=why_not or asked({})[0], busy=busy or asked({})[0], fits=fits)


def test_a_busy_tier_spills_a_score_near_its_cut_up_and_nothing_else_moves():
    busy, _ = asked({"medium": "queue_wait"})
    moved = place(0.65, busy=busy)  # within 0.1 of the cut into large
    assert (moved.tier, moved.reason, moved.degraded, moved.busy) == ("large", "load", False, "queue_wait")
    assert place(0.5, busy=busy) is None  # far from the cut: it waits its turn
    assert place(0.65, busy=busy, reason="override") is None  # a forced tier never moves
    assert place(0.65, busy=busy, own_threshold=True) is None  # nor a request's own threshold
    assert place(0.65, busy=busy, fits=lambda name: name != "large") is None  # a spill never shortens an answer
    both_busy, _ = asked({"medium": "queue_full", "large": "queue_wait"})
    assert place(0.65, busy=both_busy) is None
    assert place(0.35, busy=busy) is None  # down is off by default
    down = place(0.35, busy=busy, rule=SpillConfig(enabled=True, up=True, down=True, margin=0.1))
    assert (down.tier, down.reason) == ("small", "load")
    assert place(0.65, busy=busy, rule=SpillConfig(enabled=False)) is None
    assert place(0.65) is None  # not busy


def test_a_tier_that_cannot_serve_falls_back_before_any_spill():
    why_not, _ = asked({"medium": "engine not ready"})
    moved = place(0.65, why_not=why_not, reason="override")
    assert (moved.tier, moved.reason, moved.degraded) == ("large", "fallback", True)
