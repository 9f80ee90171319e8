"""The gateway engine's own rules (server/tiers/gateway.py), against a stand-in
for SMG (tests/unit/upstream_double.py): readiness from /readiness and the served
model, chat completions with every sampling value explicit, the gateway's
statuses mapped to the router's errors (only a malformed request is
INVALID_ARGUMENT; anything about its workers may fall back), and the prompt
counted with the tier's own tokenizer. Shown end to end against a real SMG
and real vLLM gRPC workers in tests/integration/test_smg.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.config import ResilienceConfig, SamplingDefaults, TierConfig
from server.errors import EngineFailure, InvalidArgument
from server.tiers.gateway import GatewayEngine, chat_body
from server.types import ChatMessage, EffectiveSampling

from .test_render import PREPARED
from .upstream_double import Reply, Seen, Upstream

URL = "http://smg:30000"
GREEDY = EffectiveSampling(0.0, 1.0, 0, 8, ("\n\n",), None, 1.0)


def tier() -> TierConfig:
    return TierConfig(name="large", model="M", model_path=str(PREPARED), max_model_len=2048, sampling=SamplingDefaults(),
                      backend="smg", gateway_url=URL)


def chat_sse(*texts: str) -> bytes:
    events = [{"choices": [{"delta": {"content": t}, "finish_reason": "stop" if i == len(texts) - 1 else None}]} for i, t in enumerate(texts)]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


class Gateway:
    def __init__(self):
        self.ready, self.status, self.bodies = 200, 200, []

    def __call__(self, request: Seen) -> Reply:
        if request.path == "/readiness":
            return Reply(self.ready, b"ready" if self.ready == 200 else b"no healthy worker")  # not JSON
        if request.path == "/v1/models":
            return Reply(200, {"data": [{"id": "M"}]})
        self.bodies.append(request.json())
        if self.status != 200:
            return Reply(self.status, {"error": {"message": f"status {self.status}"}})
        events = chat_sse("Par", "is").split(b"\n\n")[:-1]  # at a pace, so each is its own chunk
        return Reply(200, chunks=[e + b"\n\n" for e in events], pause=0.05)


def run(go):
    """`go(gateway, upstream)` with a stand-in gateway serving."""
    async def main():
        gateway = Gateway()
        async with Upstream(gateway) as upstream:
            return await go(gateway, upstream)

    return asyncio.run(main())


async def _started(upstream: Upstream) -> GatewayEngine:
    engine = GatewayEngine(tier(), ResilienceConfig(health_interval_s=0.05), connector=upstream.connector())
    await asyncio.wait_for(engine.start(), 10)
    return engine


async def _answer(engine, messages):
    ids = await engine.render(messages)
    return ids, [c async for c in engine.generate(ids, GREEDY, "rid")]


def test_a_ready_gateway_answers_a_chat_completion_with_every_value_explicit():
    async def go(gateway, upstream):
        engine = await _started(upstream)
        messages = [ChatMessage("user", "Capital of France?")]
        ids, chunks = await _answer(engine, messages)
        await engine.shutdown()
        return gateway, ids, chunks

    gateway, ids, chunks = run(go)
    assert "".join(c.delta for c in chunks) == "Paris" and chunks[-1].finish_reason == "stop"
    assert [c.completion_tokens for c in chunks] == [1, 2]  # counted per chunk when the gateway sends no running usage
    body = gateway.bodies[0]
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert body == chat_body("M", ids.messages, GREEDY)
    assert body["top_k"] == -1 and body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["stop"] == ["\n\n"]
    assert len(ids.ids) > 5  # counted locally with the tier's tokenizer


@pytest.mark.parametrize("status, error", [(400, InvalidArgument), (422, InvalidArgument), (503, EngineFailure),
                                           (429, EngineFailure), (404, EngineFailure), (500, EngineFailure)])
def test_only_a_malformed_request_is_invalid_argument_the_rest_may_fall_back(status, error):
    async def go(gateway, upstream):
        engine = await _started(upstream)
        gateway.status = status
        try:
            with pytest.raises(error) as raised:
                await _answer(engine, [ChatMessage("user", "hi")])
            return raised.value
        finally:
            await engine.shutdown()

    exc = run(go)
    assert not isinstance(exc, InvalidArgument) or "refused the request" in str(exc.args)


def test_readiness_follows_the_gateways_readiness_not_its_health():
    async def go(gateway, upstream):
        engine = await _started(upstream)
        assert engine.ready
        gateway.ready = 503  # SMG with no healthy worker
        await asyncio.sleep(0.3)
        down = engine.ready
        gateway.ready = 200
        await asyncio.sleep(0.3)
        up = engine.ready
        await engine.shutdown()
        return down, up

    assert run(go) == (False, True)


def test_an_unreachable_gateway_is_an_engine_failure():
    async def go(gateway, upstream):
        engine = await _started(upstream)
        await upstream.stop()  # the gateway goes away: connections are refused
        try:
            with pytest.raises(EngineFailure, match=r"tier large: gateway http://smg:30000: \w*Client\w*Error"):
                await _answer(engine, [ChatMessage("user", "hi")])
        finally:
            await engine.shutdown()

    run(go)
