"""The router core: decide -> retrieve -> look up -> admit -> stream -> finish.

A question the semantic cache may answer is embedded and searched while its
engine request starts (`cache.semantic_overlap`): a hit aborts the engine
request before any of its text is sent and answers from the cache; a miss
has lost nothing to the search.

Pure Python over the tiers (tiers.py) and their engines: no grpc here.
`generate` yields one DecisionEvent, DeltaEvents as text arrives, then one
FinalEvent; the servicer turns these into a unary answer or a stream, so
both RPCs share one path. One `RequestContext` carries a request through the
stages, so each stage reads and writes named fields instead of passing the
same values along in different orders.
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
from typing import AsyncIterator

from .cache import BYPASS, EXACT, MISS, SEMANTIC, CachedAnswer, Lookup, ResponseCache
from .config import LimitsConfig, ResilienceConfig, SpillConfig
from .errors import DeadlineExceeded, EngineFailure, FailedPrecondition, InvalidArgument, RouterError, Unavailable
from .feedback import FEEDBACK_RESULTS, Answered, RecentAnswers
from .metrics import RouterMetrics
from .policy import RoutingPolicy, question_text
from .retrieval import RetrievalService, with_sources
from .stats import Stats
from .tiers import SPILL_REASONS, Tier, Tiers
from .tracing import Tracing
from .types import (
    CacheResult,
    ChatMessage,
    Decision,
    DecisionEvent,
    DeltaEvent,
    EffectiveSampling,
    FinalEvent,
    GenerateInput,
    RetrievalResult,
    Timings,
    Usage,
)
from .validation import check_messages, check_request, check_threshold, effective_sampling

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
    announced: bool = False  # the DecisionEvent has gone out
    first_token_at: float | None = None
    parts: list[str] = field(default_factory=list)
    span: object = None  # the request's trace span, when tracing is on (tracing.py)

    @property
    def retrieval(self) -> RetrievalResult | None:
        return RetrievalResult(tuple(self.hits), self.dropped) if self.retrieving else None


class Router:
    def __init__(self, policy: RoutingPolicy, tiers: Tiers, metrics: RouterMetrics,
                 cache: ResponseCache | None = None, retrieval: RetrievalService | None = None,
                 limits: LimitsConfig | None = None, resilience: ResilienceConfig | None = None,
                 recent: RecentAnswers | None = None, keep_text: bool = False, spill: SpillConfig | None = None,
                 tracing: Tracing | None = None):
        self.policy = policy
        self.tracing = tracing or Tracing()
        self.spill = spill or SpillConfig(enabled=False)
        # What was answered lately, for the Feedback RPC (None: not taken).
        self.recent = recent
        self._keep_text = keep_text
        self.tiers = tiers
        self.metrics = metrics
        self.cache = cache
        self.retrieval = retrieval
        self.limits = limits or LimitsConfig()
        self.resilience = resilience or ResilienceConfig()
        self.stats = Stats(tiers.names)
        self._accounts: dict[tuple[str, str, str, str], tuple] = {}  # account()'s labelled series, by labels
        for tier in tiers.names:  # every series present at 0 from the start, for rate() and the dashboard
            metrics.semantic_overlap_aborts.labels(tier)
            for to in tiers.names:
                for busy in SPILL_REASONS:
                    if to != tier:
                        metrics.spills.labels(tier, to, busy)
            for result in FEEDBACK_RESULTS:
                metrics.feedback.labels(tier, result)

    def account(self, rpc: str, tier: str, reason: str, code: str, seconds: float) -> None:
        """One call's outcome, counted once, for gRPC and HTTP alike."""
        key = (rpc, tier, reason, code)
        series = self._accounts.get(key)
        if series is None:  # every label is from a bounded set, so this stays small
            m = self.metrics
            series = self._accounts[key] = (m.requests.labels(rpc, tier, reason, code), m.request_seconds.labels(rpc, tier, code),
                                            m.errors.labels(code) if code != "OK" else None)
        requests, seconds_series, errors = series
        requests.inc()
        seconds_series.observe(seconds)
        if errors is not None:
            errors.inc()
        self.stats.record_status(code)

    def classify(self, messages: tuple[ChatMessage, ...], threshold: float | None) -> tuple[Decision, float]:
        check_messages(messages, self.limits)
        check_threshold(threshold)
        return self._classify(messages, None, threshold)

    def _classify(self, messages: tuple[ChatMessage, ...], route: str | None, threshold: float | None,
                  record: bool = False) -> tuple[Decision, float]:
        """The decision on the user's own question (before any retrieved
        context), timed. `record`: it routes a request (not a Classify call)."""
        decision, classify_ms = self.policy.decide(messages, route, threshold, record=record)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        return decision, classify_ms

    # -- one request -------------------------------------------------------------

    async def generate(self, req: GenerateInput, arrived: float | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        ctx = RequestContext(req, time.perf_counter() if arrived is None else arrived)
        ctx.span = self.tracing.begin(req.trace_parent, ctx.arrived)
        try:
            # aclosing: a caller that closes this generator closes the inner
            # one at once, and with it the engine request (not at GC time).
            async with contextlib.aclosing(self._generate(ctx)) as events:
                async for event in events:
                    yield event
        except BaseException as exc:  # the span says how the request ended; the exception goes on unchanged
            self.tracing.abandon(ctx.span, exc.status if isinstance(exc, RouterError) else
                                 "CANCELLED" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "INTERNAL")
            raise

    async def _generate(self, ctx: RequestContext) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        req = ctx.req
        self._check_accepting()
        check_request(req, self.limits, self.tiers.names)
        self._decide(ctx)
        await self._retrieve(ctx)
        self._look_up(ctx)
        search = None  # the overlapped semantic search, while it runs
        try:
            if ctx.lookup.semantic_pending:
                if self.cache.config.semantic_overlap and self._can_start_now(ctx.tier):
                    search = asyncio.create_task(self._search_semantic(ctx))
                else:  # it would wait for a slot anyway, or fall back: search first
                    await self._search_semantic(ctx)
            if ctx.lookup.answer is None:
                self._choose(ctx)
                remaining = None if req.deadline_s is None else req.deadline_s - (time.perf_counter() - ctx.arrived)
                async with self.tiers.admit(ctx.tier, remaining):
                    self._check_accepting()
                    while True:
                        try:
                            # A fallback tier's answer is not the looked-up one: no overlap there.
                            async for event in self._stream(ctx, None if ctx.fell_back else search):
                                yield event
                            return
                        except SemanticHit:
                            self.metrics.semantic_overlap_aborts.labels(ctx.tier.name).inc()
                            break
                        except EngineFailedEarly as failed:
                            # Before the first token another tier may still answer; never after.
                            if ctx.fell_back or not self.resilience.fallback:
                                raise Unavailable(f"tier {ctx.tier.name} failed before answering") from failed
                            self._fall_back(ctx, "engine failed")
                            if search is not None:  # the fallback's answer stands: the search must not relabel it
                                search.cancel()
            # A cached answer needs no engine (a hit aborted the one it started).
            async for event in self._replay(ctx):
                yield event
        finally:
            if search is not None and not search.done():
                search.cancel()

    def _check_accepting(self) -> None:
        if self.tiers.draining:
            raise Unavailable("the server is shutting down")

    # -- stages ------------------------------------------------------------------

    def _decide(self, ctx: RequestContext) -> None:
        """Classify, then the tier's sampling values: the tier-dependent
        checks (max_tokens cap) fail here, before any other work."""
        req = ctx.req
        ctx.decision, ctx.timings.classify_ms = self._classify(req.messages, req.route, req.threshold, record=True)
        if not math.isnan(ctx.decision.p_complex):
            self.metrics.p_complex.observe(ctx.decision.p_complex)
        ctx.tier = self.tiers[ctx.decision.tier]
        ctx.sampling = effective_sampling(req.sampling, ctx.tier.config.sampling, ctx.tier.name)
        ctx.retrieving = self._wants_retrieval(req, ctx.tier.name)

    async def _retrieve(self, ctx: RequestContext) -> None:
        if ctx.retrieving:
            ctx.retrieved, ctx.timings.retrieve_ms = await self.retrieval.retrieve(question_text(ctx.req.messages), ctx.req.retrieval_top_k)
            ctx.hits = list(ctx.retrieved)
            self.metrics.retrieve_seconds.observe(ctx.timings.retrieve_ms / 1e3)

    def _look_up(self, ctx: RequestContext) -> None:
        """The exact cache, before asking whether any engine can serve: a hit
        needs none. The semantic search, if any, is left pending."""
        if self.cache is not None:
            keyed = with_sources(ctx.req.messages, ctx.hits, self.retrieval.max_chunk_chars) if ctx.hits else ctx.req.messages
            ctx.lookup = self.cache.lookup(ctx.req.cache_mode, keyed, ctx.sampling, ctx.tier.name, ctx.tier.model,
                                           allow_semantic=not ctx.hits)
            ctx.timings.cache_ms = ctx.lookup.ms

    async def _search_semantic(self, ctx: RequestContext) -> None:
        """A cache failure is not the request's failure: it is a miss that
        is not stored."""
        try:
            await self.cache.search_semantic(ctx.lookup)
        except Exception:
            log.warning("request %s: semantic cache lookup failed; answering without it", ctx.req.request_id, exc_info=True)
            ctx.lookup.storable = False
        ctx.timings.cache_ms = ctx.lookup.ms

    def _can_start_now(self, tier: Tier) -> bool:
        """Its engine is up and a slot is free on it and router-wide: the
        engine request would start at once, so overlapping pays."""
        return tier.up and tier.engine.ready and tier.gate.has_room() and self.tiers.gate.has_room()

    def _choose(self, ctx: RequestContext) -> None:
        why = ctx.tier.why_not()
        if why is not None:
            self._fall_back(ctx, why)
        elif self.spill.enabled and ctx.decision.reason in ("classifier", "target_share") and ctx.req.threshold is None:
            self._spill(ctx)

    def _spill(self, ctx: RequestContext) -> None:
        """Spill under load: the chosen tier would make this request wait
        past the spill budget, its score lies within the margin of the cut
        point it just crossed (or just missed), and the neighbour on that side
        can start it sooner: the neighbour answers, reason "load" (not
        degraded: the routing rule chose it). A forced tier or a request's own
        threshold never moves."""
        tier, cfg = ctx.tier, self.spill
        busy = tier.busy_reason(cfg.queue_seconds)
        if busy is None:
            return
        i, cuts, p = self.tiers.names.index(tier.name), self.policy.live_cuts, ctx.decision.p_complex
        candidates = []
        if cfg.up and i + 1 < len(self.tiers) and p >= cuts[i] - cfg.margin:
            candidates.append(self.tiers[self.tiers.names[i + 1]])
        if cfg.down and i > 0 and p < cuts[i - 1] + cfg.margin:
            candidates.append(self.tiers[self.tiers.names[i - 1]])
        for other in candidates:
            if other.why_not() is not None or other.busy_reason(cfg.queue_seconds) is not None:
                continue
            try:  # the request's own max_tokens must be valid there too: a spill never shortens an answer
                sampling = effective_sampling(ctx.req.sampling, other.config.sampling, other.name)
            except InvalidArgument:
                continue
            self.metrics.spills.labels(tier.name, other.name, busy).inc()
            self.stats.record_spill(tier.name, other.name)
            log.info("request %s: tier %s is busy (%s): spilling to %s (p_complex %.3f)", ctx.req.request_id, tier.name, busy, other.name, p)
            ctx.decision = replace(ctx.decision, tier=other.name, model=other.model, reason="load")
            ctx.lookup.storable = False  # keyed on the tier it was meant for
            ctx.tier, ctx.sampling = other, sampling
            return

    def _fall_back(self, ctx: RequestContext, why: str) -> None:
        """The nearest tier that can serve, marked degraded, with its own
        defaults and cap (clamped, not refused: the request was valid for the
        tier it was meant for); UNAVAILABLE if none can."""
        failed = ctx.tier
        reasons = [f"{failed.name}: {why}"]
        for other in self.tiers.fallbacks(failed.name):
            other_why = other.why_not() if self.resilience.fallback else "fallback disabled"
            if other_why is None:
                break
            reasons.append(f"{other.name}: {other_why}")
        else:
            raise Unavailable("no tier can serve: " + "; ".join(reasons))
        self.metrics.degraded.labels("tier_unavailable").inc()
        log.warning("tier %s cannot serve (%s): falling back to %s", failed.name, why, other.name)
        ctx.decision = replace(ctx.decision, tier=other.name, model=other.model, reason="fallback", degraded=True)
        ctx.lookup.storable = False  # keyed on the tier that could not answer
        ctx.tier = other
        ctx.sampling = effective_sampling(ctx.req.sampling, other.config.sampling, other.name, clamp=True)
        ctx.fell_back = True

    async def _stream(self, ctx: RequestContext, search: asyncio.Task | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        """Generate on `ctx.tier`. Raises EngineFailedEarly if the engine fails
        before producing any text (the caller may fall back), SemanticHit if
        the overlapped `search` answers before any text is sent."""
        tier, engine = ctx.tier, ctx.tier.engine
        try:
            prompt_ids = await self._render(ctx)
        except EngineFailure as exc:  # e.g. a remote tier's replica went away between health checks
            tier.failed()
            log.error("request %s: tier %s could not render the prompt: %s", ctx.req.request_id, tier.name, exc)
            raise EngineFailedEarly(tier.name) from exc
        room = tier.config.max_model_len - len(prompt_ids)
        if ctx.sampling.max_tokens > room:
            ctx.sampling = replace(ctx.sampling, max_tokens=room)  # what the context holds; effective_sampling says so

        completion_tokens = 0
        last_token_at = None
        finish_reason = "stop"
        m = self.metrics
        itl = m.itl_seconds.labels(tier.name)
        gauge = m.in_flight.labels(tier.name)
        gauge.inc()
        ctx.timings.routing_ms = (time.perf_counter() - ctx.arrived) * 1e3
        m.overhead_seconds.labels(tier.name).observe(ctx.timings.routing_ms / 1e3)
        m.engine_requests.labels(tier.name).inc()
        timeout_s = tier.config.generation_timeout_s
        ceiling = time.monotonic() + timeout_s
        stream = engine.generate(prompt_ids, ctx.sampling, ctx.req.request_id).__aiter__()
        try:
            while True:
                try:
                    # The ceiling covers only the wait on the engine, so its
                    # cancellation lands inside the engine call (which aborts
                    # the request) and never inside the caller's write.
                    async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, ceiling - time.monotonic())):
                        if search is None:
                            chunk = await anext(stream)
                        else:
                            chunk = await _next_unless_hit(stream, search, ctx.lookup)
                            search = None  # settled, a miss
                except StopAsyncIteration:
                    break
                except SemanticHit:
                    raise
                except TimeoutError:
                    raise DeadlineExceeded(f"tier {tier.name} stopped generating at its {timeout_s:g} s ceiling") from None
                except (RouterError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    tier.failed()
                    log.error("request %s: tier %s engine failed: %s", ctx.req.request_id, tier.name, exc, exc_info=exc)
                    if not ctx.parts or not ctx.req.stream:
                        # Nothing the caller has seen: another tier may still answer, from the start.
                        ctx.parts.clear()
                        ctx.first_token_at = None
                        raise EngineFailedEarly(tier.name) from exc
                    raise Unavailable(f"tier {tier.name} failed while answering") from None
                if self.tiers.past_drain_deadline():
                    raise Unavailable("the server shut down before this answer finished")
                now = time.perf_counter()
                new_tokens = chunk.completion_tokens - completion_tokens
                completion_tokens = chunk.completion_tokens
                if chunk.queue_s is not None:
                    ctx.timings.queue_ms = chunk.queue_s * 1e3
                if new_tokens > 0:
                    if ctx.first_token_at is None:
                        ctx.first_token_at = now
                    elif last_token_at is not None:
                        gap = (now - last_token_at) / new_tokens
                        for _ in range(new_tokens):
                            itl.observe(gap)
                    last_token_at = now
                if chunk.delta:
                    ctx.parts.append(chunk.delta)
                    if ctx.req.stream:
                        # The decision goes out with the first text, once the tier is sure.
                        for event in self._announce(ctx):
                            yield event
                        yield DeltaEvent(chunk.delta)
                if chunk.finished:
                    finish_reason = chunk.finish_reason or "stop"
        finally:
            gauge.dec()
            await stream.aclose()
        tier.succeeded()
        for event in self._announce(ctx):
            yield event
        if not ctx.req.stream and ctx.parts:
            yield DeltaEvent("".join(ctx.parts))  # held back until the answer was whole
        usage = Usage(len(prompt_ids), completion_tokens)
        if self.cache is not None and ctx.lookup.status == MISS:
            # Only here, after a normal end: a cancelled stream never gets this far.
            self.cache.store(ctx.lookup, CachedAnswer("".join(ctx.parts), finish_reason, usage.prompt_tokens, usage.completion_tokens))
        yield self._finish(ctx, finish_reason, usage, ctx.first_token_at)

    def _announce(self, ctx: RequestContext) -> list[DecisionEvent]:
        if ctx.announced:
            return []
        ctx.announced = True
        return [DecisionEvent(ctx.decision)]

    async def _replay(self, ctx: RequestContext) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        """A cached answer, through the same events as a generated one."""
        answer = ctx.lookup.answer
        yield DecisionEvent(ctx.decision)
        first = time.perf_counter()
        for piece in replay_deltas(answer.text):
            yield DeltaEvent(piece)
        ctx.retrieving = bool(ctx.hits)  # sources are reported when the cached answer was keyed on some
        yield self._finish(ctx, answer.finish_reason, Usage(answer.prompt_tokens, answer.completion_tokens), first)

    def _finish(self, ctx: RequestContext, finish_reason: str, usage: Usage, first_token_at: float | None) -> FinalEvent:
        """Timings, metrics, stats and the request's log line, once, for a
        generated and a replayed answer alike."""
        done = time.perf_counter()
        first = first_token_at or done
        t = ctx.timings
        t.ttft_ms = (first - ctx.arrived) * 1e3
        t.generate_ms = (done - first) * 1e3
        t.total_ms = (done - ctx.arrived) * 1e3
        status = ctx.lookup.status
        if status not in (EXACT, SEMANTIC):  # a replayed answer's timings are not the engine's: log only
            tier, m = ctx.decision.tier, self.metrics
            m.ttft_seconds.labels(tier).observe(t.ttft_ms / 1e3)
            m.queue_seconds.labels(tier).observe(t.queue_ms / 1e3)
            m.generate_seconds.labels(tier).observe(t.generate_ms / 1e3)
            m.prompt_tokens.labels(tier).inc(usage.prompt_tokens)
            m.completion_tokens.labels(tier).inc(usage.completion_tokens)
            m.prompt_tokens_per_request.labels(tier).observe(usage.prompt_tokens)
            m.completion_tokens_per_request.labels(tier).observe(usage.completion_tokens)
            self.stats.record_generation(tier, t.total_ms, t.ttft_ms, t.generate_ms, usage.completion_tokens)
        self.stats.record_cache(status)
        if self.recent is not None:
            d = ctx.decision
            self.recent.remember(ctx.req.request_id, Answered(d.tier, d.model, d.p_complex, d.threshold, d.reason, time.time(),
                                                              question_text(ctx.req.messages) if self._keep_text else None))
        self._log(ctx, usage)
        self.tracing.finish(ctx.span, ctx.req.request_id, ctx.decision, t, usage, status, ctx.arrived, done, first_token_at)
        return FinalEvent(finish_reason, usage, t, ctx.sampling, CacheResult(status, ctx.lookup.similarity), ctx.retrieval)

    # -- helpers -----------------------------------------------------------------

    def _wants_retrieval(self, req: GenerateInput, tier: str) -> bool:
        wanted = req.retrieval if req.retrieval is not None else (self.retrieval is not None and tier in self.retrieval.default_tiers)
        if wanted and self.retrieval is None:
            raise FailedPrecondition("retrieval: this server has no document index configured (retrieval.index)")
        return bool(wanted)

    async def _render(self, ctx: RequestContext) -> list[int]:
        """Prompt tokens, with as many retrieved chunks as the tier's context
        holds next to the answer's budget; the lowest-ranked go first."""
        tier, messages = ctx.tier.config, ctx.req.messages
        ctx.hits, ctx.dropped = list(ctx.retrieved), 0  # a fallback tier may hold more
        while True:
            prompt_ids = await ctx.tier.engine.render(with_sources(messages, ctx.hits, self.retrieval.max_chunk_chars) if ctx.hits else messages)
            if not ctx.hits or len(prompt_ids) + ctx.sampling.max_tokens <= tier.max_model_len:
                break
            ctx.hits = ctx.hits[:-1]
            ctx.dropped += 1
        if len(prompt_ids) >= tier.max_model_len:
            raise InvalidArgument("messages", f"the prompt is {len(prompt_ids)} tokens; tier {tier.name} holds at most {tier.max_model_len - 1}")
        return prompt_ids

    @staticmethod
    def _log(ctx: RequestContext, usage: Usage) -> None:
        # One structured line per request: sizes and times, never the text.
        if not log.isEnabledFor(logging.INFO):
            return
        d = ctx.decision
        log.info(
            json.dumps(
                {
                    "request_id": ctx.req.request_id,
                    "tier": d.tier,
                    "reason": d.reason,
                    "cache": ctx.lookup.status,
                    "p_complex": None if math.isnan(d.p_complex) else round(d.p_complex, 4),
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    **{k: round(v, 2) for k, v in vars(ctx.timings).items()},
                }
            )
        )


async def _next_unless_hit(stream, search: asyncio.Task, lookup: Lookup):
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


def replay_deltas(text: str, words_per_delta: int = 3) -> list[str]:
    """A cached answer streamed back as deltas that concatenate to it."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    return ["".join(pieces[i : i + words_per_delta]) for i in range(0, len(pieces), words_per_delta)]
