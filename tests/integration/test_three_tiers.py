"""A third tier is configuration: config/cpu-3tier.yaml (small, medium, large
on three real vLLM CPU engines) serves, routes by its cut points, falls back
to the nearest tier, and shows all three in ListModels, GetStats and the
metrics."""

from __future__ import annotations

import time

import pytest

from clients import NotFoundError
from triage_proto import router_pb2 as pb

from .conftest import _test_config, start_server, stop_server
from .test_faults import kill_engine

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("three")
    # No restart: the fallback test below keeps the medium tier down.
    config = _test_config(tmp, "cpu-3tier.yaml", resilience={"restart_dead_engines": False})
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
