"""Shadow evaluation's mechanics on fake engines (the behaviour on the real
CPU engines: tests/integration/test_shadow.py): a shadow runs only on an
idle tier, stops the moment live traffic starts there, and its comparison
becomes an outcome in the feedback store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from server.config import load
from server.types import EngineChunk

from .conftest import serve_in_thread
from .test_status_codes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]


class ShadowStalls(FakeEngine):
    """Live requests answer "ok"; a shadow request (its id ends in -shadow)
    sends one word, then waits for ever unless `release` is set."""

    release = False
    shadows_closed = 0

    async def generate(self, prompt, sampling, request_id):
        if not request_id.endswith("-shadow"):
            async for chunk in super().generate(prompt, sampling, request_id):
                yield chunk
            return
        try:
            yield EngineChunk("ok", 1)
            while not self.release:
                await asyncio.sleep(0.01)
        finally:
            type(self).shadows_closed += 1


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture
def served(tmp_path):
    store = tmp_path / "feedback.sqlite"
    config = load(ROOT / "config/cpu.yaml", [f"store.url=sqlite:///{store}", "routing.shadow={enabled: true, sample: 1.0}"]).with_ports(0, -1)
    engines = {n: ShadowStalls(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    ShadowStalls.release, ShadowStalls.shadows_closed = False, 0
    with serve_in_thread(config, engines) as (client, app):
        yield client, app.router.metrics.registry, store, engines


def _count(registry, direction, result):
    return registry.get_sample_value("router_shadow_requests_total", {"direction": direction, "result": result})


def test_a_live_request_stops_the_shadow_on_its_tier_at_once(served):
    client, registry, _, _ = served
    r = client.generate("What is the capital of France?", route="small", cache="off")
    assert (r.text, r.decision.tier_name) == ("ok", "small")  # the caller's answer, untouched
    _wait(lambda: _count(registry, "up", "sent") == 1)
    started = time.monotonic()
    live = client.generate("Explain tides.", route="large", cache="off")
    assert live.text == "ok" and time.monotonic() - started < 2
    _wait(lambda: _count(registry, "up", "preempted") == 1 and ShadowStalls.shadows_closed == 1)  # its engine request closed
    # The live answer on large now shadows down to small, which is idle: it runs.
    _wait(lambda: _count(registry, "down", "sent") == 1)


def test_a_busy_tier_gets_no_shadow_and_agreement_is_stored_as_an_outcome(served):
    client, registry, store, engines = served
    ShadowStalls.release = True
    client.generate("What is the capital of France?", route="small", cache="off")
    _wait(lambda: _count(registry, "up", "agreed") == 1)
    rows = sqlite3.connect(store).execute("SELECT request_id, tier, correct, label FROM feedback").fetchall()
    assert len(rows) == 1 and rows[0][1:] == ("small", 1, "shadow-up") and rows[0][0].endswith(":shadow")
    assert registry.get_sample_value("router_shadow_outcomes_total", {"direction": "up", "bucket": "0.1", "agreed": "true"}) == 1.0
    # A live stream held open on large keeps it busy: the next small answer's shadow is dropped, not queued.
    engines["large"].stall_after = 1
    stream = client.generate_stream("Explain tides.", route="large", cache="off")
    try:
        assert next(stream).WhichOneof("event") == "decision"
        client.generate("What is the capital of Spain?", route="small", cache="off")
        _wait(lambda: _count(registry, "up", "dropped") == 1)
        assert _count(registry, "up", "sent") == 1
    finally:
        stream.close()
        engines["large"].stall_after = None
