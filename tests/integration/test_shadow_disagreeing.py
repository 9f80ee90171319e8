"""Shadow evaluation when the tiers answer differently: a test profile whose
large tier stops at the first space (its sampling's `stop`), so its answer
is one word where the small tier's is a sentence. The small answers,
shadowed up, are stored as disagreeing outcomes of the small tier (not
necessarily all: a word can be the whole final answer)."""

from __future__ import annotations

import sqlite3

import pytest

from .conftest import _test_config, start_server, stop_server
from .test_shadow import _settled


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow-disagreeing")
    store = tmp / "feedback.sqlite"
    config = _test_config(tmp, store={"url": f"sqlite:///{store}"}, routing={"shadow": {"enabled": True, "sample": 1.0}},
                          tiers={"large": {"sampling": {"max_tokens": 256, "max_tokens_cap": 1024, "stop": [" "]}}})
    server = start_server(config, tmp)
    server.store = store
    yield server
    assert stop_server(server) == 0


def test_answers_that_differ_are_stored_as_disagreeing_outcomes(disagreeing):
    for question in ("Name three rivers in Europe.", "Describe the water cycle in two sentences.", "What is photosynthesis?"):
        answer = disagreeing.client.generate(question, route="small", max_tokens=24, cache="off")
        assert answer.decision.tier_name == "small" and " " in answer.text.strip()
        _settled(disagreeing)
    rows = sqlite3.connect(disagreeing.store).execute("SELECT tier, correct FROM feedback WHERE label = 'shadow-up'").fetchall()
    assert len(rows) == 3 and all(tier == "small" for tier, _ in rows)
    disagreed = sum(correct == 0 for _, correct in rows)
    assert disagreed >= 2
    assert disagreeing.metric_value("router_shadow_requests_total", direction="up", result="disagreed") == disagreed
