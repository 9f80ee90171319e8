"""Shadows (server/routing/shadow.py) with a stand-in engine and store: the order in
which a shadow's end is published. The feature itself is proven on the real
CPU engines in tests/integration/test_shadow*.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from server.config import SamplingDefaults, ShadowConfig
from server.routing.feedback import FeedbackTable
from store import Store
from store.writer import BufferedWrites, StoreThreads
from server.observe.metrics import RouterMetrics
from server.routing.shadow import Answer, Shadows
from server.types import ChatMessage, Decision, SamplingRequest


class Engine:
    async def render(self, messages):
        return SimpleNamespace(ids=[1, 2, 3])

    async def generate(self, prompt, sampling, request_id):
        yield SimpleNamespace(delta="Paris")


class SlowTable(FeedbackTable):
    """Commits a row a while after it is asked to, as a disk can."""

    def write(self, tx, *args):
        time.sleep(0.3)
        super().write(tx, *args)


class Grader:
    def agree(self, question, first, second):
        return first == second


def _tier(name):
    gate = SimpleNamespace(in_flight=0, waiting=0)
    config = SimpleNamespace(sampling=SamplingDefaults(), max_model_len=2048)
    return SimpleNamespace(name=name, model=f"{name}-model", ready=True, gate=gate, engine=Engine(), config=config)


class Tiers(dict):
    names = ("small", "large")


def test_a_shadow_counted_as_ended_has_its_outcome_stored(tmp_path):
    """Before the fix the agreement was counted before the row was written:
    a reader who waited for the count could find the store without it."""
    metrics = RouterMetrics(CollectorRegistry(), ("small", "large"))
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    threads = StoreThreads(store)
    answer = Answer("r1", (ChatMessage("user", "Capital of France?"),), SamplingRequest(),
                    Decision("small", "small-model", 0.2, 0.5, "classifier"), "Paris")

    def ended():
        return sum(metrics.shadow_requests.labels("up", r)._value.get() for r in ("agreed", "disagreed", "preempted", "failed"))

    async def run():
        memory = SimpleNamespace(feedback=SlowTable(store, 100), writes=BufferedWrites(threads, 10, metrics))
        shadows = Shadows(ShadowConfig(enabled=True, sample=1.0), Tiers(small=_tier("small"), large=_tier("large")),
                          memory, Grader(), metrics, rng=lambda: 0.0)
        shadows.consider(answer)
        for _ in range(200):
            if ended():
                # Another connection, as another reader would: it sees only what is committed.
                return sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT tier, correct, label FROM feedback").fetchall()
            await asyncio.sleep(0.005)
        raise AssertionError("the shadow never ended")

    assert asyncio.run(run()) == [("small", 1, "shadow-up")]
