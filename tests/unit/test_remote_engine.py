"""The remote engine's own rules, against stand-in replicas: replica
choice, the one retry before the first token (never after), health checks
that verify the served model, and failures mapped to the router's errors.
The feature itself is shown end to end against a real `vllm serve` in
tests/integration/test_remote.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from server.config import ResilienceConfig, SamplingDefaults, TierConfig
from server.errors import InvalidArgument
from server.observe.metrics import RouterMetrics
from server.tiers.remote import RemoteEngine, completion_body
from server.tiers.upstream import UpstreamError
from server.types import EffectiveSampling, Prompt

from .upstream_double import Reply, Seen, Upstream

A, B = "http://a:8000", "http://b:8000"
GREEDY = EffectiveSampling(0.0, 1.0, 0, 8, ("\n\n",), None, 1.0)


def tier(*replicas: str) -> TierConfig:
    return TierConfig(name="large", model="M", model_path="M", max_model_len=4096, sampling=SamplingDefaults(),
                      backend="remote", replicas=replicas)


def events(*texts: str, finish: str = "length") -> list[bytes]:
    """One completion event per text, then [DONE] (with the last)."""
    out = []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        event = {"choices": [{"text": text, "finish_reason": finish if last else None}], "usage": {"completion_tokens": i + 1}}
        out.append(b"data: " + json.dumps(event).encode() + b"\n\n" + (b"data: [DONE]\n\n" if last else b""))
    return out


def sse(*texts: str, finish: str = "length") -> bytes:
    return b"".join(events(*texts, finish=finish))


class Servers:
    """Each replica's behaviour for /v1/completions; /health and /v1/models answer unless told."""

    def __init__(self):
        self.completions: dict[str, object] = {}
        self.models: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self.bodies: list[dict] = []

    def __call__(self, request: Seen) -> Reply:
        base, path = request.base, request.path
        if path == "/health":
            return Reply(200, b"ok")  # not JSON: a health check reads only the status
        if path == "/v1/models":
            return Reply(200, {"data": [{"id": m, "max_model_len": 4096} for m in self.models.get(base, ["M"])]})
        self.calls.append(base)
        self.bodies.append(request.json())
        self.headers = {k.lower(): v for k, v in request.headers.items()}
        behaviour = self.completions.get(base, sse("ok"))
        if isinstance(behaviour, int):
            return Reply(behaviour, {"error": {"message": f"status {behaviour}"}})
        if isinstance(behaviour, Reply):
            return behaviour
        return Reply(200, chunks=[behaviour])


def run(coro):
    return asyncio.run(coro)


def run_with(servers: Servers, go):
    """`go(upstream)` with the stand-in replicas serving."""
    async def main():
        async with Upstream(servers) as upstream:
            return await go(upstream)

    return asyncio.run(main())


async def started(upstream: Upstream, *replicas: str, registry=None) -> RemoteEngine:
    metrics = RouterMetrics(registry or CollectorRegistry())
    engine = RemoteEngine(tier(*replicas), ResilienceConfig(health_interval_s=0.05), metrics, connector=upstream.connector())
    await asyncio.wait_for(engine.start(), 5)
    return engine


async def collect(engine: RemoteEngine) -> list:
    return [c async for c in engine.generate(Prompt([1, 2, 3], ()), GREEDY, "r1")]


def answer(servers: Servers, *replicas: str) -> list:
    """One generation's chunks from an engine started on the stand-in replicas."""
    async def go(upstream):
        engine = await started(upstream, *replicas)
        try:
            return await collect(engine)
        finally:
            await engine.shutdown()

    return run_with(servers, go)


def test_every_sampling_value_is_sent_explicitly():
    body = completion_body("M", [1, 2], GREEDY)
    for key in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "n"):
        assert key in body, key
    assert body["prompt"] == [1, 2] and body["add_special_tokens"] is False and body["stream"] is True


def test_stream_becomes_engine_chunks_with_cumulative_tokens():
    servers = Servers()
    servers.completions[A] = Reply(200, chunks=events("Par", "is", ".", finish="stop"), pause=0.05)  # a token at a time

    chunks = answer(servers, A)
    assert [c.delta for c in chunks] == ["Par", "is", "."]
    assert [c.completion_tokens for c in chunks] == [1, 2, 3]
    assert chunks[-1].finished and chunks[-1].finish_reason == "stop"
    assert not any(c.finished for c in chunks[:-1])


def test_events_that_arrive_together_become_one_chunk():
    """A server faster than the router: what has arrived is forwarded as one
    chunk (one message to the caller instead of one per token), with the
    same text, count and finish."""
    servers = Servers()
    servers.completions[A] = sse("Par", "is", ".", finish="stop")  # all in one write

    chunks = answer(servers, A)
    assert [(c.delta, c.completion_tokens, c.finished, c.finish_reason) for c in chunks] == [("Paris.", 3, True, "stop")]


def test_the_requests_trace_context_goes_to_the_replica():
    """tracing.begin puts the request span's traceparent in TRACEPARENT; the
    replica gets it as a header, so its own spans hang under the router's."""
    from server.observe.tracing import TRACEPARENT

    servers = Servers()
    value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def go(upstream):
        engine = await started(upstream, A)
        try:
            TRACEPARENT.set(value)
            await collect(engine)
        finally:
            await engine.shutdown()

    run_with(servers, go)
    assert servers.headers["traceparent"] == value and servers.headers["x-request-id"] == "r1"


def test_a_replica_failing_before_the_first_token_is_retried_once_on_another():
    servers = Servers()
    servers.completions[A] = 503
    servers.completions[B] = sse("fine")
    registry = CollectorRegistry()

    async def go(upstream):
        engine = await started(upstream, A, B, registry=registry)
        engine.replicas[1].in_flight = 1  # A is preferred (fewer outstanding), and fails
        try:
            return await collect(engine), engine
        finally:
            await engine.shutdown()

    chunks, engine = run_with(servers, go)
    assert "".join(c.delta for c in chunks) == "fine"
    assert servers.calls == [A, B]
    assert engine.replicas[0].breaker.failures == 1
    assert registry.get_sample_value("router_replica_errors_total", {"tier": "large", "replica": A}) == 1


def test_no_retry_after_the_first_token():
    servers = Servers()

    servers.completions[A] = Reply(200, chunks=[b'data: {"choices": [{"text": "Hel", "finish_reason": null}], "usage": {"completion_tokens": 1}}\n\n'],
                                   reset=True)  # the connection drops after one chunk
    servers.completions[B] = sse("never")

    async def go(upstream):
        engine = await started(upstream, A, B)
        engine.replicas[1].in_flight = 1
        got = []
        try:
            with pytest.raises(UpstreamError):
                async for c in engine.generate(Prompt([1], ()), GREEDY, "r2"):
                    got.append(c.delta)
        finally:
            await engine.shutdown()
        return got

    assert run_with(servers, go) == ["Hel"]
    assert servers.calls == [A]


def test_the_replica_with_fewest_outstanding_requests_is_chosen():
    servers = Servers()

    async def go(upstream):
        engine = await started(upstream, A, B)
        engine.replicas[0].in_flight = 2
        try:
            await collect(engine)
        finally:
            await engine.shutdown()

    run_with(servers, go)
    assert servers.calls == [B]


def test_a_request_the_server_refuses_is_invalid_argument():
    servers = Servers()
    servers.completions[A] = 400

    async def go(upstream):
        engine = await started(upstream, A)
        try:
            with pytest.raises(InvalidArgument, match="status 400"):
                await collect(engine)
        finally:
            await engine.shutdown()

    run_with(servers, go)


def test_a_replica_serving_another_model_is_not_healthy():
    servers = Servers()
    servers.models[A] = ["other-model"]

    async def go(upstream):
        engine = RemoteEngine(tier(A, B), ResilienceConfig(health_interval_s=0.05), None, connector=upstream.connector())
        await asyncio.wait_for(engine.start(), 5)  # B is fine
        await asyncio.sleep(0.2)
        try:
            return engine.replicas
        finally:
            await engine.shutdown()

    a, b = run_with(servers, go)
    assert not a.healthy and "other-model" in a.problem
    assert b.healthy


def test_an_endless_event_line_is_refused_not_buffered():
    from server.tiers.upstream import MAX_LINE_BYTES, line_batches

    class Content:  # 64 kB reads with never a newline
        reads = 0

        async def readany(self):
            Content.reads += 1
            return b"x" * 65536 if Content.reads < 1000 else b""

    class Response:
        content = Content()

    async def go():
        return [batch async for batch in line_batches(Response())]

    with pytest.raises(UpstreamError, match="over"):
        asyncio.run(go())
    assert Content.reads <= MAX_LINE_BYTES // 65536 + 2  # refused as soon as it passed the bound


def test_a_tiers_stream_interval_is_asked_of_the_server_only_when_above_one():
    assert "stream_interval" not in completion_body("M", [1, 2], GREEDY)
    assert completion_body("M", [1, 2], GREEDY, stream_interval=4)["stream_interval"] == 4
