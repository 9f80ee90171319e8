"""Streams merge their text while the router's event loop is saturated
(server/observe/pace.py), over a real grpc.aio server: the whole text, in order,
in fewer messages; and a message a token while the loop keeps up.

The engine is a fake that says a numbered word every 2 ms, so what arrived
is checkable word by word; the loop is saturated by work run on it (10 ms
slices of CPU with half a millisecond's breath between them, as a burst of
new requests and hundreds of streams' relays keep it; the breath lets
grpc.aio's completion queue in). Under a GPU's pace the same is
measured by `python -m benchmarks.gpu_pace` (docs/benchmarks.md, section 12).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.config import load
from server.types import EngineChunk, Prompt

from .conftest import StubEngine, serve_in_thread, serving_loop

ROOT = Path(__file__).resolve().parents[2]
WORDS = 100


class WordEngine(StubEngine):
    async def render(self, messages):
        return Prompt([1] * 8, tuple(messages))

    async def generate(self, prompt, sampling, request_id):
        """As vLLM's engines: the words come at their own pace, whether or
        not the router is reading; what came since the last read is
        merged into one chunk (vLLM's RequestOutputCollector, or a remote
        server's events waiting in the connection's buffer)."""
        said: list[str] = []
        arrived = asyncio.Event()

        async def speak():
            for i in range(1, WORDS + 1):
                await asyncio.sleep(0.002)
                said.append(f"w{i} ")
                arrived.set()

        speaker = asyncio.create_task(speak())
        sent = 0
        try:
            while sent < WORDS:
                await arrived.wait()
                arrived.clear()
                text, sent = "".join(said[sent:]), len(said)
                yield EngineChunk(text, sent, finished=sent == WORDS, finish_reason="length" if sent == WORDS else None)
        finally:
            speaker.cancel()


async def saturate(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        burn = time.perf_counter() + 0.010
        while time.perf_counter() < burn:
            pass
        await asyncio.sleep(0.0005)


@pytest.fixture(scope="module")
def served():
    config = load(ROOT / "config/cpu.yaml").with_ports(0, -1)
    engines = {n: WordEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    with serve_in_thread(config, engines, timeout=60, pressure=True) as (client, app):
        yield client, app


def two_streams(client) -> list[list]:
    def one(n):
        return list(client.generate_stream(f"question {n}", route="small", cache="off", max_tokens=WORDS))

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(2)))


def deltas(events) -> list[str]:
    return [e.delta for e in events if e.WhichOneof("event") == "delta"]


EXPECTED = "".join(f"w{i} " for i in range(1, WORDS + 1))


def test_streams_that_keep_up_get_a_message_per_token(served):
    client, _ = served
    for events in two_streams(client):
        assert len(deltas(events)) == WORDS
        assert "".join(deltas(events)) == EXPECTED


def test_streams_on_a_saturated_loop_get_the_whole_text_in_order_in_fewer_messages(served):
    client, app = served
    holds = app.router.metrics.stream_holds._value.get()
    hog = asyncio.run_coroutine_threadsafe(saturate(10.0), serving_loop(app))
    try:
        started = time.perf_counter()
        answers = two_streams(client)
        print(f"two streams on a saturated loop: {time.perf_counter() - started:.2f} s, "
              f"{[len(deltas(events)) for events in answers]} messages for {WORDS} tokens each")
    finally:
        hog.cancel()
    for events in answers:
        text = deltas(events)
        assert "".join(text) == EXPECTED  # nothing lost, nothing reordered
        assert events[-1].final.usage.completion_tokens == WORDS
        assert len(text[0].split()) == 1  # the first text goes alone, at once
        assert len(text) < WORDS / 3
    assert app.router.metrics.stream_holds._value.get() > holds
