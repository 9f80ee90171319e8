"""HTTP to the servers behind a tier (`vllm serve` replicas in remote.py, a
gateway in gateway.py): the client, its shutdown, the server-sent event
stream read as EngineChunks, and a server's error message, once for both."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

from .config import TierConfig
from .errors import EngineFailure
from .types import EffectiveSampling, EngineChunk

HEALTH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5.0


class UpstreamError(EngineFailure):
    """A server behind the tier could not serve (connection, HTTP 5xx, a
    broken stream): the tier failed, and another tier may answer."""


def http_client(tier: TierConfig, api_key: str | None, transport=None):
    """An httpx client for a tier's servers (remote replicas, or a gateway)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # The read timeout is per chunk; the tier's generation ceiling and the
    # caller's deadline bound the whole answer in the router.
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=tier.generation_timeout_s, write=10.0, pool=CONNECT_TIMEOUT_S)
    # No pool limit: every streamed answer holds a connection, and with
    # httpx's default of 100 the health checks would queue behind busy
    # streams and time out, taking a healthy server out under load. The
    # router's admission limits already bound how many requests are out.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers, transport=transport)


def streamed_sampling(s: EffectiveSampling, disabled_top_k: int) -> dict:
    """The OpenAI-style request fields for one streamed answer, every
    sampling value explicit (a server fills an unset one from the model's
    generation_config.json), with cumulative completion tokens on every
    chunk, so inter-token latency and usage are measured as in process."""
    return {
        "n": 1,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k if s.top_k > 0 else disabled_top_k,
        "min_p": 0.0,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": s.seed,
        "stop": list(s.stop),
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


async def close(checker: asyncio.Task | None, client) -> None:
    """Stop a health checker, then close the client it used."""
    if checker is not None:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
    if client is not None:
        await client.aclose()


async def sse_chunks(lines: AsyncIterator[str]) -> AsyncIterator[EngineChunk]:
    """Server-sent completion or chat completion events (vLLM's server,
    SMG) as EngineChunks."""
    tokens = 0
    finished = False
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            if not finished:
                raise UpstreamError("the stream ended without a finish reason")
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise UpstreamError(f"not JSON in the event stream: {data[:100]!r}") from None
        if "error" in event:
            raise UpstreamError(f"error event: {error_text(json.dumps(event).encode())}")
        usage = event.get("usage") or {}
        choices = event.get("choices") or []
        if not choices:  # the closing usage-only event
            continue
        choice = choices[0]
        tokens = usage.get("completion_tokens", tokens + 1)
        reason = choice.get("finish_reason")
        finished = finished or reason is not None
        # A completion's choice has text; a chat completion's (gateway.py) a delta.
        text = choice["text"] if "text" in choice else (choice.get("delta") or {}).get("content")
        yield EngineChunk(delta=text or "", completion_tokens=tokens, finished=reason is not None, finish_reason=reason)
    raise UpstreamError("the connection closed before the answer finished")


def error_text(raw: bytes) -> str:
    """A server's error message, short, for a status message or the log."""
    try:
        body = json.loads(raw)
        message = body.get("error", body)
        message = message.get("message", message) if isinstance(message, dict) else message
        return str(message)[:300]
    except (ValueError, AttributeError):
        return raw[:300].decode(errors="replace")


def transport_errors():
    """httpx's errors (connection refused or reset, timeouts, a broken
    stream); imported on use, like every heavy dependency."""
    import httpx

    return httpx.HTTPError
