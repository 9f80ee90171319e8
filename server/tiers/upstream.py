"""HTTP to the servers behind a tier (`vllm serve` replicas in remote.py, a
gateway in gateway.py): the client, its shutdown, the server-sent event
stream read as EngineChunks, and a server's error message, once for both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec

from ..config import TierConfig
from ..errors import EngineFailure
from ..types import EffectiveSampling, EngineChunk

log = logging.getLogger("triage.upstream")

HEALTH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5.0


class UpstreamError(EngineFailure):
    """A server behind the tier could not serve (connection, HTTP 5xx, a
    broken stream): the tier failed, and another tier may answer."""


def http_client(tier: TierConfig, api_key: str | None, connector=None):
    """An aiohttp session for a tier's servers (remote replicas, or a
    gateway). aiohttp, not httpx: on loopback httpx took 1.3 ms to a
    streamed answer's first event and aiohttp 0.2 ms, and a remote tier pays
    that on every request (`python -m benchmarks.upstream_client`).
    `connector`: tests pass one that reaches a stand-in server."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # No read timeout: the tier's generation ceiling (request.Ceiling) and
    # the caller's deadline bound a whole answer in the router, and a read
    # timeout is a timer moved on every chunk received. Short requests
    # (/tokenize, health) carry their own.
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
    # No connection limit: every streamed answer holds a connection, and a
    # limit would queue the health checks behind busy streams until they
    # time out, taking a healthy server out under load. The router's
    # admission limits already bound how many requests are out.
    # An idle connection is dropped after 4 s, before the 5 s after which
    # vLLM's server (uvicorn) closes it: a request never goes out on a
    # connection the server is closing.
    connector = connector or aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4.0)
    # read_bufsize bounds one event-stream line: 1 MB, far above any chunk.
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers, read_bufsize=2**20,
                                 cookie_jar=aiohttp.DummyCookieJar())


async def get_status(client, url: str) -> int:
    """A health check's status (its body, whatever it is, is not read)."""
    import aiohttp

    async with client.get(url, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as resp:
        return resp.status


async def served_models(client, base_url: str) -> dict[str, dict]:
    """The models a server says it serves (`/v1/models`), by id: what a
    server coming (back) up is checked against."""
    import aiohttp

    async with client.get(f"{base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as resp:
        if resp.status != 200:
            raise UpstreamError(f"/v1/models answered {resp.status}")
        body = await resp.json(content_type=None)
    return {m.get("id"): m for m in body.get("data", [])}


async def post_json(client, url: str, body: dict, timeout_s: float) -> tuple[int, bytes]:
    """A short POST (a replica's /tokenize): its status and body."""
    import aiohttp

    async with client.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        return resp.status, await resp.read()


_JSON = msgspec.json.Encoder()


@contextlib.asynccontextmanager
async def post_stream(client, url: str, body: dict, headers: dict):
    """A streamed POST's response. Left early (the caller went away, a
    deadline, an error), the connection is closed rather than returned to
    the pool, so the server sees the disconnect and aborts the request."""
    # msgspec, not aiohttp's json.dumps: a tenth of its time, once per request.
    resp = await client.post(url, data=_JSON.encode(body), headers={"Content-Type": "application/json", **headers})
    try:
        yield resp
    except BaseException:
        resp.close()
        raise
    finally:
        resp.release()


# An event-stream line longer than this is a broken server, not an answer.
MAX_LINE_BYTES = 1 << 20


async def line_batches(resp) -> AsyncIterator[list[bytes]]:
    """A response body's lines, in batches: each read takes every complete
    line that has arrived. When a server sends faster than the router
    forwards, its events come in batches that sse_chunks merges, so the
    router's work per token falls as the token rate rises."""
    rest = b""
    while True:
        data = await resp.content.readany()
        if not data:
            if rest:
                yield [rest]
            return
        *complete, rest = (rest + data).split(b"\n")
        if len(rest) > MAX_LINE_BYTES:
            raise UpstreamError(f"an event-stream line over {MAX_LINE_BYTES} bytes")
        if complete:
            yield complete


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


def check_forever(check: Callable[[], Awaitable[None]], interval_s: float) -> asyncio.Task:
    """The background health check of a tier's servers, every `interval_s`."""
    async def loop() -> None:
        while True:
            await check()
            await asyncio.sleep(interval_s)

    return asyncio.create_task(loop())


async def wait_until_ready(tier: str, ready: Callable[[], bool], why_not: Callable[[], str], warn_every_s: float = 30.0) -> float:
    """Until the health check finds the tier's servers ready (the router
    stays NOT_SERVING meanwhile, as while a local engine loads), saying why
    not every `warn_every_s`. Returns the seconds it took."""
    started = time.monotonic()
    next_warning = started + warn_every_s
    while not ready():
        await asyncio.sleep(0.2)
        if time.monotonic() >= next_warning:
            next_warning += warn_every_s
            log.warning("tier %s: not ready yet: %s", tier, why_not())
    return time.monotonic() - started


async def close(checker: asyncio.Task | None, client) -> None:
    """Stop a health checker, then close the client it used."""
    if checker is not None:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
    if client is not None:
        await client.close()


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    text: str | None = None  # a completion's
    delta: _Delta | None = None  # a chat completion's (gateway.py)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    completion_tokens: int | None = None


class _Event(msgspec.Struct):
    """The fields of a streamed (chat) completion event the router reads;
    the rest is skipped by the decoder without being built."""
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


# One typed decode of the bytes: a sixth of json.loads's time per event,
# and one event arrives per token (benchmarks.gpu_pace).
_EVENT = msgspec.json.Decoder(_Event)


async def sse_chunks(batches: AsyncIterator[list[bytes]]) -> AsyncIterator[EngineChunk]:
    """Server-sent completion or chat completion events (vLLM's server,
    SMG) as EngineChunks, one per batch of lines (line_batches): the events
    that arrived together become one chunk with their texts joined."""
    tokens = 0
    finished = False
    async for batch in batches:
        texts: list[str] = []
        reason = None
        done = False
        for line in batch:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                event = _EVENT.decode(data)
            except msgspec.DecodeError:
                raise UpstreamError(f"not a completion event in the stream: {data[:100]!r}") from None
            if event.error is not None:
                raise UpstreamError(f"error event: {error_text(data)}")
            if not event.choices:  # the closing usage-only event
                continue
            choice = event.choices[0]
            usage = event.usage
            tokens = usage.completion_tokens if usage is not None and usage.completion_tokens is not None else tokens + 1
            reason = choice.finish_reason or reason
            text = choice.text if choice.text is not None else choice.delta.content if choice.delta is not None else None
            texts.append(text or "")
        if texts:
            finished = finished or reason is not None
            yield EngineChunk(delta="".join(texts), completion_tokens=tokens, finished=reason is not None, finish_reason=reason)
        if done:
            if not finished:
                raise UpstreamError("the stream ended without a finish reason")
            return
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


def transport_errors() -> tuple[type[BaseException], ...]:
    """aiohttp's errors (connection refused or reset, a broken stream) and a
    read that timed out; aiohttp is imported on use, like every dependency
    only some tiers need."""
    import aiohttp

    return (aiohttp.ClientError, asyncio.TimeoutError)
