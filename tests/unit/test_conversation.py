"""The conversation's score (server/routing/conversation.py) and session affinity's
store and rules (server/routing/sessions.py, server/routing/placement.py)."""

from __future__ import annotations

import pytest

import classifier
from benchmarks.followups import evaluate, load_cases
from server.routing import placement
from server.errors import InvalidArgument
from server.routing.conversation import conversation_score, follow_up_weight
from server.routing.sessions import SessionStore
from server.types import ChatMessage

HARD = "A tank fills through pipe A in 6 hours and through pipe B in 4 hours. How long with both open?"
ANSWER = "Together they fill 5/12 of the tank per hour: 2.4 hours."
SCORES = {HARD: 0.9, "What is the capital of France?": 0.1, "Paris.": 0.0, "and why?": 0.6, "Who wrote Hamlet?": 0.1}


def scorer(texts):
    return [SCORES[t] for t in texts]


def chat(*turns: str) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns))


@pytest.mark.parametrize("message, follow_up", [
    ("and why?", True), ("Now do it for 5 notebooks instead.", True), ("What if pipe B were closed?", True),
    ("Is that right? Check it.", True),
    ("Thanks! Unrelated: who wrote Hamlet?", False), ("How many continents are there?", False),
    ("Write a SQL query that returns the highest salary per department.", False),
])
def test_follow_ups_read_as_follow_ups_and_new_questions_do_not(message, follow_up):
    w = follow_up_weight(message, [HARD, ANSWER])
    assert (w > 0.5) == follow_up, w


def test_a_follow_up_inherits_the_turns_before_it_and_a_new_question_keeps_its_own():
    assert conversation_score(chat(HARD, ANSWER, "and why?"), scorer, 4) > 0.85  # the hard turn's weight
    assert conversation_score(chat("What is the capital of France?", "Paris.", "and why?"), scorer, 4) < 0.2  # the easy one's
    assert conversation_score(chat(HARD, ANSWER, "Who wrote Hamlet?"), scorer, 4) < 0.2
    assert conversation_score(chat(HARD, ANSWER, "and why?"), scorer, 1) == 0.6  # one turn: the last message alone
    assert conversation_score(chat("and why?"), scorer, 4) == 0.6


def test_on_the_follow_up_set_the_conversation_score_beats_the_last_message():
    """benchmarks/data/followups.jsonl with the committed classifier: more
    conversations on the tier they need, and a better ranking."""
    clf = classifier.load()
    r = evaluate(load_cases(), clf.score, clf.threshold, 4)
    last, conv = r["last message only"], r["conversation (4 user turns)"]
    assert conv["placed_right"]["all"] >= last["placed_right"]["all"] + 0.05
    assert conv["auc"] >= last["auc"] + 0.05
    assert conv["placed_right"]["new-simple"] >= last["placed_right"]["new-simple"]  # new cheap questions stay cheap


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_session_goes_up_never_down_and_is_forgotten_after_its_idle_time():
    clock = Clock()
    store = SessionStore(10, idle_seconds=60, clock=clock)
    assert store.tier("c1") is None
    store.reached("c1", 2)
    store.reached("c1", 0)  # a cheaper answer does not bring it down
    assert store.tier("c1") == 2 and store.escalations == 0
    store.reached("c2", 0)
    store.reached("c2", 1)
    assert store.tier("c2") == 1 and store.escalations == 1
    clock.now = 59.0
    assert store.tier("c1") == 2  # seen: alive for another 60 s
    clock.now = 118.0
    assert store.tier("c2") is None and store.tier("c1") == 2 and store.expiries == 1
    clock.now = 200.0
    assert store.tier("c1") is None and len(store) == 0 and store.expiries == 2


def test_the_store_stays_bounded_under_unique_session_ids():
    """100,000 conversations of one request each, 100 per simulated second:
    the store never holds more than max_sessions, and once the idle time
    has passed it holds only the last idle_seconds' worth."""
    clock = Clock()
    store = SessionStore(5_000, idle_seconds=30, clock=clock)
    sizes = []
    for n in range(100_000):
        clock.now = n / 100
        store.tier(f"s{n}")
        store.reached(f"s{n}", n % 3)
        if n % 10_000 == 9_999:
            sizes.append(len(store))
    assert max(sizes) <= 5_000
    assert sizes[-1] == 3_000  # 30 s at 100 a second
    assert store.expiries == 100_000 - len(store)


def test_session_affinity_raises_only_the_scores_own_decisions():
    assert placement.by_session(0, "classifier", 2) == 2
    assert placement.by_session(1, "target_share", 2) == 2
    assert placement.by_session(2, "classifier", 1) is None  # the score goes higher: it stands
    assert placement.by_session(0, "override", 2) is None  # a named tier is the caller's choice
    assert placement.by_session(0, "classifier", None) is None


def test_a_prompt_too_long_for_its_tier_goes_to_the_nearest_that_holds_it():
    tiers, lens = ("small", "medium", "large"), (2048, 3072, 4096)
    moved = placement.for_context(tiers, "small", 2500, lens, {"small"})
    assert (moved.tier, moved.reason, moved.degraded) == ("medium", "context", False)
    assert placement.for_context(tiers, "small", 3500, lens, {"small"}).tier == "large"
    assert placement.for_context(tiers, "medium", 3100, lens, {"small", "medium"}).tier == "large"  # counted again on medium
    with pytest.raises(InvalidArgument, match="the prompt is 5000 tokens; the largest context, tier large's, holds at most 4095"):
        placement.for_context(tiers, "small", 5000, lens, {"small"})
