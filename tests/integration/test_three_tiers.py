"""A third tier is configuration: config/cpu-3tier.yaml (small, medium, large
on three real vLLM CPU engines, contexts of 2,048, 3,072 and 4,096 tokens)
serves, routes by its cut points, keeps a conversation on the tier it
reached (session affinity), sends a prompt too long for a tier to one whose
context holds it, falls back to the nearest tier, and shows all three in
ListModels, GetStats and the metrics."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from clients import InvalidArgumentError, NotFoundError
from triage_proto import router_pb2 as pb

from .conftest import _test_config, start_server, stop_server
from .test_faults import kill_engine

MODEL = "SmolLM2-135M-Instruct"
IDLE_S = 4  # routing.session.idle_seconds in this module's profile
HARD = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?")
FOLLOW_UP = "What is the capital of France?"  # scored alone: the cheapest tier


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("three")
    # No restart: the fallback test below keeps the medium tier down.
    config = _test_config(tmp, "cpu-3tier.yaml", resilience={"restart_dead_engines": False}, routing={"session": {"idle_seconds": IDLE_S}})
    server = start_server(config, tmp)
    yield server
    assert stop_server(server) == 0


def test_three_tiers_are_listed_cheapest_first_with_their_cut_points(three):
    models = three.client.list_models()
    assert [t.tier_name for t in models.tiers] == ["small", "medium", "large"]
    assert [t.tier for t in models.tiers] == [pb.TIER_SMALL, pb.TIER_UNSPECIFIED, pb.TIER_LARGE]
    assert [t.max_model_len for t in models.tiers] == [2048, 3072, 4096]
    assert list(models.cut_points) == pytest.approx([0.3, 0.6]) and models.threshold == pytest.approx(0.6)
    assert all(t.ready for t in models.tiers)


def test_the_classifier_score_picks_the_tier_by_cut_point(three):
    seen = set()
    for question in ("What is the capital of France?", "Which countries border both France and Germany?",
                     "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?"):
        d = three.client.classify(question).decision
        expected = "small" if d.p_complex < 0.3 else "medium" if d.p_complex < 0.6 else "large"
        assert (d.tier_name, d.reason) == (expected, "classifier"), (question, d.p_complex)
        assert d.threshold == pytest.approx(0.6 if expected == "large" else 0.3)
        seen.add(d.tier_name)
    assert {"small", "large"} <= seen


def test_the_medium_tier_answers_and_shows_in_metrics_and_stats(three):
    r = three.client.generate("What is the capital of France?", route="medium", max_tokens=24, cache="off")
    assert (r.decision.tier_name, r.decision.tier, r.decision.reason) == ("medium", pb.TIER_UNSPECIFIED, "override")
    assert "Paris" in r.text
    assert r.effective_sampling.max_tokens == 24
    default = three.client.generate("Name a colour.", route="medium", cache="off")
    assert default.effective_sampling.max_tokens == 192  # the medium tier's own default
    assert three.metric_value("router_engine_ready", tier="medium", model=MODEL) == 1.0
    assert three.metric_value("router_requests_total", rpc="Generate", tier="medium", reason="override", code="OK") == 2.0
    stats = three.client.stats()
    medium = next(t for t in stats.tiers if t.tier_name == "medium")
    assert medium.requests == 2 and medium.model == MODEL
    assert "medium" in stats.summary
    with pytest.raises(NotFoundError, match="no tier named 'huge'"):
        three.client.generate("hi", route="huge")


def _http(three, body: dict, headers: dict | None = None) -> tuple[dict, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{three.http_port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read()), dict(r.headers)


def test_a_follow_up_in_a_session_stays_on_the_tier_the_conversation_reached(three):
    """The client sends only the follow-up, as many do: alone it scores for
    the cheapest tier. With the conversation's session id it is answered by
    the large tier its first turn reached; without one, with another id, or
    after the idle time, it is scored afresh."""
    client = three.client
    assert client.classify(FOLLOW_UP).decision.tier_name == "small"
    first = client.generate(HARD, session_id="conv-1", max_tokens=8, cache="off")
    assert (first.decision.tier_name, first.decision.reason) == ("large", "classifier")
    kept = client.generate(FOLLOW_UP, session_id="conv-1", max_tokens=16, cache="off")
    assert (kept.decision.tier_name, kept.decision.reason, kept.decision.degraded) == ("large", "session", False)
    assert "Paris" in kept.text
    assert kept.decision.threshold == pytest.approx(0.6)  # the cut into the tier it is kept on
    for session in ("", "conv-2"):
        fresh = client.generate(FOLLOW_UP, session_id=session, max_tokens=8, cache="off")
        assert (fresh.decision.tier_name, fresh.decision.reason) == ("small", "classifier"), session
    # HTTP: OpenAI's `user` field, or the x-session-id header, is the session.
    body = {"model": "auto", "messages": [{"role": "user", "content": FOLLOW_UP}], "max_tokens": 8}
    _, headers = _http(three, {**body, "user": "conv-1"})
    assert (headers["x-triage-tier"], headers["x-triage-reason"]) == ("large", "session")
    _, headers = _http(three, body, {"x-session-id": "conv-1"})
    assert headers["x-triage-tier"] == "large"
    stats = client.stats()
    assert (stats.sessions, stats.session_pins) == (2, 3)
    assert three.metric_value("router_session_pins_total") == 3.0
    time.sleep(IDLE_S + 1)
    after = client.generate(FOLLOW_UP, session_id="conv-1", max_tokens=8, cache="off")
    assert (after.decision.tier_name, after.decision.reason) == ("small", "classifier")
    assert three.metric_value("router_session_expiries_total") >= 2.0  # conv-1 and conv-2


def test_a_prompt_too_long_for_the_small_tier_is_answered_by_one_whose_context_holds_it(three):
    """About 2,400 tokens: over the small tier's 2,048, within the medium
    tier's 3,072 (the nearest that holds it). Over every tier's context:
    INVALID_ARGUMENT naming the largest."""
    filler = "The quick brown fox jumps over the lazy dog. " * 240
    long_question = filler + "\nIn one word: what animal jumps over the dog?"
    r = three.client.generate(long_question, route="small", max_tokens=8, cache="off")
    assert (r.decision.tier_name, r.decision.reason, r.decision.degraded) == ("medium", "context", False)
    assert 2048 < r.usage.prompt_tokens < 3072 and r.usage.completion_tokens > 0
    with pytest.raises(InvalidArgumentError, match=r"the largest context, tier large's, holds at most 4095"):
        three.client.generate(filler * 2, route="small", max_tokens=8, cache="off")


def test_a_dead_middle_tier_falls_back_to_the_nearest_more_capable_one(three):
    kill_engine(three, "medium")
    deadline = time.monotonic() + 30
    while three.client.health("router.v1.Router/medium") != "NOT_SERVING":
        assert time.monotonic() < deadline, "medium tier never went NOT_SERVING"
        time.sleep(0.2)
    assert three.client.health() == "SERVING"
    r = three.client.generate("What is the capital of France?", route="medium", max_tokens=24, cache="off")
    assert (r.decision.tier_name, r.decision.degraded, r.decision.reason) == ("large", True, "fallback")
    assert "Paris" in r.text
    assert three.metric_value("router_engine_ready", tier="medium", model=MODEL) == 0.0
