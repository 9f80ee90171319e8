"""Spill under load, on a real grpc.aio server around held engines: only a
fake makes "the small tier is busy" exact and instant, and the scores are
fixed so that "near the cut" is exact too. What a spill gains on the real CPU
engines is measured by `python -m benchmarks --only spill` (docs/routing.md)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.config import load

from .conftest import serve_in_thread
from .test_admission import ROOT, HeldEngine, _wait_for

SCORES = {"far below": 0.05, "just below": 0.40, "just above": 0.50, "far above": 0.95}


class FixedScores:
    """Scores by the question's text before " #", so "near the cut" is exact."""

    threshold = 0.45

    @staticmethod
    def score(texts):
        return [SCORES[t.split(" #")[0]] for t in texts]


@pytest.fixture
def served(tmp_path):
    text = (ROOT / "config/cpu.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/")
    text = text.replace("    max_in_flight: 16\n    max_queued: 32", "    max_in_flight: 1\n    max_queued: 4")
    text = text.replace("  threshold: null ", "  threshold: 0.45 ")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    config = load(path, ["routing.spill.margin=0.1", "routing.spill.queue_seconds=0.3"]).with_ports(0, -1)
    engines = {n: HeldEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    with serve_in_thread(config, engines, timeout=30, clf=FixedScores()) as (client, app):
        try:
            yield client, engines, app
        finally:
            for e in engines.values():
                e.release.set()


def _make_busy(client, engines, app, pool, tier: str, question: str):
    """One request holding the tier's only slot and one queued behind it,
    after one that teaches the tier's slot-time estimate (~0.4 s): a new
    request would wait ~0.8 s, past the 0.3 s spill budget."""
    engines[tier].hold_s = 0.4
    client.generate(f"{question} #warm", cache="off")
    engines[tier].hold_s = 0.0
    engines[tier].release.clear()
    held = [pool.submit(client.generate, f"{question} #{i}", cache="off") for i in range(2)]
    _wait_for(lambda: app.tiers[tier].gate.waiting == 1 and engines[tier].running == 1)
    return held


def test_a_request_near_the_cut_spills_up_when_its_tier_is_busy_and_is_counted(served):
    client, engines, app = served
    with ThreadPoolExecutor(8) as pool:
        held = _make_busy(client, engines, app, pool, "small", "far below")
        r = client.generate("just below", cache="off", timeout=5)
        assert (r.decision.tier_name, r.decision.reason, r.decision.degraded) == ("large", "load", False)
        assert r.decision.threshold == pytest.approx(0.45)
        # Far from the cut it stays, and waits its turn; a forced tier never moves.
        stays = pool.submit(client.generate, "far below #stays", cache="off")
        forced = pool.submit(client.generate, "just below #forced", route="small", cache="off")
        _wait_for(lambda: app.tiers["small"].gate.waiting == 3)
        engines["small"].release.set()
        for f in (*held, stays, forced):
            assert f.result(timeout=10).decision.tier_name == "small"
    registry = app.router.metrics.registry
    assert registry.get_sample_value("router_spills_total", {"tier": "small", "to_tier": "large", "reason": "queue_wait"}) == 1.0
    assert registry.get_sample_value("router_spills_total", {"tier": "large", "to_tier": "small", "reason": "queue_wait"}) == 0.0
    stats = {t.tier_name: t for t in client.stats().tiers}
    assert (stats["small"].spilled_out, stats["large"].spilled_in) == (1, 1)


def test_spilling_down_to_the_cheaper_tier_is_off_unless_enabled(served):
    client, engines, app = served
    with ThreadPoolExecutor(8) as pool:
        held = _make_busy(client, engines, app, pool, "large", "far above")
        waiting = pool.submit(client.generate, "just above #default", cache="off")
        _wait_for(lambda: app.tiers["large"].gate.waiting == 2)  # it queued on large: no spill down
        app.router.spill = dataclasses.replace(app.router.spill, down=True)
        r = client.generate("just above #enabled", cache="off", timeout=5)
        assert (r.decision.tier_name, r.decision.reason) == ("small", "load")
        engines["large"].release.set()
        assert [f.result(timeout=10).decision.tier_name for f in (*held, waiting)] == ["large"] * 3
        assert waiting.result().decision.reason == "classifier"
