"""One request on its way through the router: the state every stage reads
and writes (`RequestContext`), the signals between stages, the progress of
its generation, and its one log line. No grpc and no engines here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field, replace

from .lookup.cache import BYPASS, Lookup
from .errors import DeadlineExceeded, EngineFailure, PromptTooLong, RouterError, Unavailable
from .lookup.retrieval import with_sources
from .tiers.tier import Tier
from .types import Decision, DecisionEvent, EffectiveSampling, GenerateInput, Prompt, RetrievalResult, Timings

log = logging.getLogger("triage.request")


class EngineFailedEarly(Exception):
    """The engine failed before producing text: another tier may still answer."""


class SemanticHit(Exception):
    """The overlapped semantic search found an answer before any engine text
    was sent: the engine request has been aborted."""


@dataclass
class RequestContext:
    """One request on its way through the router."""

    req: GenerateInput
    arrived: float  # perf_counter() when the RPC arrived
    decision: Decision | None = None
    tier: Tier | None = None  # the tier answering (another one after a fallback)
    sampling: EffectiveSampling | None = None  # the answering tier's values
    timings: Timings = field(default_factory=Timings)
    retrieving: bool = False
    retrieved: list = field(default_factory=list)  # chunks found, best first
    hits: list = field(default_factory=list)  # those placed in the prompt (fewer if the context is short)
    dropped: int = 0  # retrieved chunks left out to fit the context
    lookup: Lookup = field(default_factory=lambda: Lookup(BYPASS))
    fell_back: bool = False
    failure_mark: int | None = None  # the answering tier's, as the request reached its engine (Tier.failed)
    prompt: Prompt | None = None  # rendered before admission, on `prompt_tier`
    prompt_tier: str = ""
    announced: bool = False  # the DecisionEvent has gone out
    first_token_at: float | None = None
    parts: list[str] = field(default_factory=list)
    span: object = None  # the request's trace span, when tracing is on (tracing.py)

    @property
    def retrieval(self) -> RetrievalResult | None:
        return RetrievalResult(tuple(self.hits), self.dropped) if self.retrieving else None

    def announce(self) -> list[DecisionEvent]:
        """The DecisionEvent, the first time only."""
        if self.announced:
            return []
        self.announced = True
        return [DecisionEvent(self.decision)]


class Progress:
    """A generation's token count, finish reason and inter-token gaps."""

    def __init__(self, itl):
        self.itl = itl
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._last_token_at: float | None = None

    def took(self, ctx: RequestContext, chunk) -> None:
        now = time.perf_counter()
        new_tokens = chunk.completion_tokens - self.completion_tokens
        self.completion_tokens = chunk.completion_tokens
        if chunk.queue_s is not None:
            ctx.timings.queue_ms = chunk.queue_s * 1e3
        if new_tokens > 0:
            if ctx.first_token_at is None:
                ctx.first_token_at = now
            elif self._last_token_at is not None:
                self.itl.observe((now - self._last_token_at) / new_tokens, new_tokens)
            self._last_token_at = now
        if chunk.finished:
            self.finish_reason = chunk.finish_reason or "stop"


class StreamInterval:
    """Streamed text in messages of at least `tokens` new tokens (the tier's
    stream_interval). The first text goes at once, so the time to the first
    token is untouched; later text waits until that many tokens have come,
    and what is held goes with the last chunk. The engine is asked for the
    same interval (vLLM's own setting); this holds to it whatever it sends."""

    def __init__(self, tokens: int):
        self.tokens = tokens
        self._held: list[str] = []
        self._sent_at: int | None = None  # completion tokens when the last message went

    def add(self, chunk) -> str | None:
        """The text to send now, or None while this chunk's is held."""
        if self.tokens == 1:
            return chunk.delta
        self._held.append(chunk.delta)
        if self._sent_at is not None and not chunk.finished and chunk.completion_tokens - self._sent_at < self.tokens:
            return None
        self._sent_at = chunk.completion_tokens
        return self.rest()

    def rest(self) -> str:
        text = "".join(self._held)
        self._held.clear()
        return text


def report_move(ctx: RequestContext, to: str, moved, metrics, stats) -> None:
    """What a move away from the decided tier tells the log, the metrics and
    GetStats (placement.Moved: a spill, a fallback or a context move)."""
    before = ctx.tier.name
    if moved.reason == "context":
        log.info("request %s: the prompt does not fit tier %s's context: tier %s answers", ctx.req.request_id, before, to)
    elif moved.reason == "load":
        metrics.spills.labels(before, to, moved.busy).inc()
        stats.record_spill(before, to)
        log.info("request %s: tier %s is busy (%s): spilling to %s (p_complex %.3f)", ctx.req.request_id, before, moved.busy, to,
                 ctx.decision.p_complex)
    else:
        metrics.degraded.labels("tier_unavailable").inc()
        log.warning("tier %s cannot serve (%s): falling back to %s", before, moved.why, to)


def log_line(finished) -> None:
    """The listener (finished.py): one structured line per request, sizes
    and times, never the text."""
    if not log.isEnabledFor(logging.INFO):
        return
    d, usage = finished.decision, finished.usage
    log.info(
        json.dumps(
            {
                "request_id": finished.req.request_id,
                "caller": finished.req.caller,
                # When it arrived, on the wall clock (seconds since the epoch), to line it up with other services' logs.
                "arrived_at": round(time.time() - (time.perf_counter() - finished.arrived), 6),
                "tier": d.tier,
                "reason": d.reason,
                "cache": finished.cache_status,
                "p_complex": None if math.isnan(d.p_complex) else round(d.p_complex, 4),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                **{k: round(v, 2) for k, v in vars(finished.timings).items()},
            }
        )
    )


async def next_unless_hit(stream, search: asyncio.Task, lookup: Lookup):
    """The engine's next chunk (or its StopAsyncIteration) once the semantic
    search has settled as a miss: nothing of the engine's goes out before
    that (the search ends in milliseconds, prefill rarely sooner). On a hit,
    SemanticHit; if the engine was still working, its request is cancelled
    first (vLLM aborts it, a remote server sees its connection close). An
    engine that failed before the search ended fails the request as usual."""
    pending = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.wait({pending, search}, return_when=asyncio.FIRST_COMPLETED)
        engine_failed = pending.done() and not isinstance(pending.exception(), (type(None), StopAsyncIteration))
        if not engine_failed:
            await search
            if lookup.answer is not None:
                raise SemanticHit()
        return await pending
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending


async def _fit_prompt(ctx: RequestContext, max_chunk_chars: int) -> Prompt:
    """Prompt tokens on the answering tier, with as many retrieved chunks as
    its context holds next to the answer's budget; the lowest-ranked go
    first. INVALID_ARGUMENT when the conversation alone does not fit."""
    tier, messages = ctx.tier.config, ctx.req.messages
    ctx.hits, ctx.dropped = list(ctx.retrieved), 0  # a fallback tier may hold more
    while True:
        prompt = await ctx.tier.engine.render(with_sources(messages, ctx.hits, max_chunk_chars) if ctx.hits else messages)
        if not ctx.hits or len(prompt.ids) + ctx.sampling.max_tokens <= tier.max_model_len:
            break
        ctx.hits = ctx.hits[:-1]
        ctx.dropped += 1
    if len(prompt.ids) >= tier.max_model_len:
        raise PromptTooLong(tier.name, len(prompt.ids), tier.max_model_len)
    return prompt


async def prompt_for(ctx: RequestContext, max_chunk_chars: int) -> Prompt:
    """The prompt's tokens on the answering tier, and the answer's budget
    cut to what its context holds beside them (effective_sampling says so).
    The one rendered before admission when it is for this tier."""
    tier = ctx.tier
    ctx.failure_mark = tier.failure_mark()
    if ctx.prompt is not None and ctx.prompt_tier == tier.name:
        return ctx.prompt
    try:
        prompt = await _fit_prompt(ctx, max_chunk_chars)
    except EngineFailure as exc:  # e.g. a remote tier's replica went away between health checks
        tier.failed(ctx.failure_mark)
        log.error("request %s: tier %s could not render the prompt: %s", ctx.req.request_id, tier.name, exc)
        raise EngineFailedEarly(tier.name) from exc
    room = tier.config.max_model_len - len(prompt.ids)
    if ctx.sampling.max_tokens > room:
        ctx.sampling = replace(ctx.sampling, max_tokens=room)
    ctx.prompt, ctx.prompt_tier = prompt, tier.name
    return prompt


class Ceiling:
    """A tier's generation ceiling over one answer, as one timer. It covers
    only the waits on the engine: when it passes during one, that wait is
    cancelled where it is (inside the engine call, which aborts the
    request), never inside the caller's write; when it passes between two
    chunks, the next wait ends at once. (A timeout around each wait, as
    before, set and cancelled a timer per chunk: a tenth of the router's
    CPU at a GPU's pace, benchmarks.gpu_pace.)"""

    def __init__(self, tier: Tier):
        self.tier = tier
        self.passed = False
        self.waiting = False
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(tier.config.generation_timeout_s, self._pass)

    def _pass(self) -> None:
        self.passed = True
        if self.waiting:
            self._task.cancel()

    def close(self) -> None:
        self._timer.cancel()

    def error(self) -> DeadlineExceeded:
        c = self.tier.config
        return DeadlineExceeded(f"tier {c.name} stopped generating at its {c.generation_timeout_s:g} s ceiling")


async def next_chunk(ctx: RequestContext, stream, search: asyncio.Task | None, ceiling: Ceiling):
    """The engine's next chunk, or None at its end, within the tier's
    ceiling. An engine failure before any text the caller has seen is
    EngineFailedEarly (another tier may answer from the start)."""
    tier = ctx.tier
    if ceiling.passed:
        raise ceiling.error()
    ceiling.waiting = True
    try:
        return await (anext(stream) if search is None else next_unless_hit(stream, search, ctx.lookup))
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError:
        # The ceiling's own cancellation, and no other (a caller that went away) pending: a deadline.
        if ceiling.passed and asyncio.current_task().uncancel() == 0:
            raise ceiling.error() from None
        raise
    except (SemanticHit, RouterError):
        raise
    except Exception as exc:
        # The incident's first failure carries the traceback; the requests it
        # took down with it (a dead engine fails all it held) one line each.
        new_incident = tier.failed(ctx.failure_mark)
        log.error("request %s: tier %s engine failed: %s", ctx.req.request_id, tier.name, exc, exc_info=exc if new_incident else None)
        if not ctx.parts or not ctx.req.stream:
            ctx.parts.clear()
            ctx.first_token_at = None
            raise EngineFailedEarly(tier.name) from exc
        raise Unavailable(f"tier {tier.name} failed while answering") from None
    finally:
        ceiling.waiting = False


def replay_deltas(text: str, words_per_delta: int = 3) -> list[str]:
    """A cached answer streamed back as deltas that concatenate to it."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    return ["".join(pieces[i : i + words_per_delta]) for i in range(0, len(pieces), words_per_delta)]
