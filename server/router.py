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
import logging
import math
import time
from dataclasses import replace
from typing import AsyncIterator, Callable

from .callers.ledger import Ledger
from .routing import placement
from .lookup.cache import EXACT, MISS, SEMANTIC, CachedAnswer, ResponseCache
from .config import CostConfig, LimitsConfig, ResilienceConfig, SpillConfig
from .observe.costs import Costs
from .errors import PromptTooLong, RouterError, Unavailable
from .finished import Finished, Listeners
from .observe.metrics import RouterMetrics
from .observe.pace import LoopPressure
from .routing.policy import RoutingPolicy
from .request import (Ceiling, EngineFailedEarly, Progress, RequestContext, SemanticHit, StreamInterval, next_chunk, prompt_for,
                      replay_deltas, report_move)
from .lookup.retrieval import RetrievalService, wants_retrieval, with_sources
from .observe.stats import Stats
from .tiers.tier import Tiers
from .observe.tracing import Tracing
from .types import (
    CacheResult,
    ChatMessage,
    Decision,
    DecisionEvent,
    DeltaEvent,
    FinalEvent,
    GenerateInput,
    Usage,
    question_text,
)
from .validation import allows, check_messages, check_request, check_threshold, effective_sampling

log = logging.getLogger("triage.request")


class Router:
    def __init__(self, policy: RoutingPolicy, tiers: Tiers, metrics: RouterMetrics, *,
                 cache: ResponseCache | None = None, retrieval: RetrievalService | None = None,
                 limits: LimitsConfig | None = None, resilience: ResilienceConfig | None = None, spill: SpillConfig | None = None,
                 tracing: Tracing | None = None, costs: Costs | None = None, stats: Stats | None = None, listeners: Listeners | None = None,
                 on_engine_start: Callable[[str], None] | None = None, ledger: Ledger | None = None,
                 pressure: LoopPressure | None = None):
        """`listeners`: told of every finished request (finished.py; app.py
        lists them, the ledger's charge among them); `on_engine_start(tier)`:
        a live request is about to start on the tier's engine (shadows yield
        to it); `ledger`: the callers' limits (server/callers/ledger.py);
        `pressure`: whether the event loop is saturated, when streams merge
        their text (server/observe/pace.py; app.py starts it)."""
        self.policy, self.tiers, self.metrics, self.cache, self.retrieval = policy, tiers, metrics, cache, retrieval
        self.tracing, self.listeners = tracing or Tracing(), listeners or Listeners(())
        self.spill, self.limits, self.resilience = spill or SpillConfig(enabled=False), limits or LimitsConfig(), resilience or ResilienceConfig()
        self.costs = costs or Costs({name: CostConfig() for name in tiers.names}, tiers.names[-1])
        self.stats = stats or Stats(tiers.names)  # GetStats' figures; a listener keeps them (app.py)
        self._on_engine_start = on_engine_start or (lambda tier: None)
        self.ledger = ledger or Ledger(())
        self.pressure = pressure or LoopPressure()  # not started: never busy
        self._chunk_chars = retrieval.max_chunk_chars if retrieval is not None else 0  # the longest retrieved chunk a prompt carries

    def classify(self, messages: tuple[ChatMessage, ...], threshold: float | None) -> tuple[Decision, float]:
        check_messages(messages, self.limits)
        check_threshold(threshold)
        return self._classify(messages, None, threshold)

    def _classify(self, messages: tuple[ChatMessage, ...], route: str | None, threshold: float | None,
                  record: bool = False, session_id: str = "") -> tuple[Decision, float]:
        """The decision on the user's own question (before any retrieved
        context), timed. `record`: it routes a request (not a Classify call)."""
        decision, classify_ms = self.policy.decide(messages, route, threshold, record=record, session_id=session_id)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        return decision, classify_ms

    # -- one request -------------------------------------------------------------

    async def generate(self, req: GenerateInput, arrived: float | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        ctx = RequestContext(req, time.perf_counter() if arrived is None else arrived)
        ctx.span = self.tracing.begin(req.trace_parent, ctx.arrived, req.caller)
        try:
            self.tiers.check_accepting()
            check_request(req, self.limits, self.tiers.names)
            # The caller's limits, after validation and before any other work.
            # aclosing: a caller that closes this generator closes the inner
            # one at once, and with it the engine request (not at GC time).
            with self.ledger.hold(req.caller):
                async with contextlib.aclosing(self._generate(ctx)) as events:
                    async for event in events:
                        yield event
        except BaseException as exc:  # the span says how the request ended; the exception goes on unchanged
            self.tracing.abandon(ctx.span, exc.status if isinstance(exc, RouterError) else
                                 "CANCELLED" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else "INTERNAL")
            raise

    async def _generate(self, ctx: RequestContext) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        req = ctx.req
        if req.session_id:
            await self.policy.recall(req.session_id)
        self._decide(ctx)
        await self._retrieve(ctx)
        self._look_up(ctx)
        search = None  # the overlapped semantic search, while it runs
        try:
            if ctx.lookup.semantic_pending:
                if self.cache.config.semantic_overlap and self.tiers.can_start_now(ctx.tier, req.caller):
                    search = asyncio.create_task(self._search_semantic(ctx))
                else:  # it would wait for a slot anyway, or fall back: search first
                    await self._search_semantic(ctx)
            if ctx.lookup.answer is None:
                if await self._fit(ctx) and search is not None:  # the looked-up tier is not the one answering
                    search.cancel()
                    search = None
                self._place(ctx)
                remaining = None if req.deadline_s is None else req.deadline_s - (time.perf_counter() - ctx.arrived)
                async with self.tiers.admit(ctx.tier, remaining, req.caller):
                    self.tiers.check_accepting()
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
                            self._after_early_failure(ctx, failed)
                            if search is not None:  # the fallback's answer stands: the search must not relabel it
                                search.cancel()
            # A cached answer needs no engine (a hit aborted the one it started).
            async for event in self._replay(ctx):
                yield event
        finally:
            if search is not None and not search.done():
                search.cancel()

    # -- stages ------------------------------------------------------------------

    def _decide(self, ctx: RequestContext) -> None:
        """Classify, then the tier's sampling values: the tier-dependent
        checks (max_tokens cap) fail here, before any other work."""
        req = ctx.req
        ctx.decision, ctx.timings.classify_ms = self._classify(req.messages, req.route, req.threshold, record=True, session_id=req.session_id)
        if not math.isnan(ctx.decision.p_complex):
            self.metrics.p_complex.observe(ctx.decision.p_complex)
        ctx.tier = self.tiers[ctx.decision.tier]
        ctx.sampling = effective_sampling(req.sampling, ctx.tier.config.sampling, ctx.tier.name)
        ctx.retrieving = wants_retrieval(self.retrieval, req.retrieval, ctx.tier.name)

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
        await self.cache.search_or_miss(ctx.lookup, ctx.req.request_id)
        ctx.timings.cache_ms = ctx.lookup.ms

    async def _fit(self, ctx: RequestContext) -> bool:
        """Rule 6 (placement.for_context): render the prompt on the decided
        tier; one its context cannot hold goes to the nearest tier whose
        context can. A tier that cannot render (a remote replica gone) falls
        back (rule 8). True when the tier changed. A tier whose engine is
        not up is left to rules 7-8 (the fallback tier renders as it starts)."""
        moved, tried = False, set()
        while ctx.tier.ready:
            try:
                await prompt_for(ctx, self._chunk_chars)
                return moved
            except PromptTooLong as exc:
                tried.add(ctx.tier.name)
                names = self.tiers.names
                self._move(ctx, placement.for_context(names, ctx.tier.name, exc.tokens,
                                                      [self.tiers[n].config.max_model_len for n in names], tried))
                moved = True
            except EngineFailedEarly as failed:
                self._after_early_failure(ctx, failed)
                moved = True
        return moved

    def _after_early_failure(self, ctx: RequestContext, failed: EngineFailedEarly) -> None:
        """Before the first token another tier may still answer; never after,
        and only once."""
        if ctx.fell_back or not self.resilience.fallback:
            raise Unavailable(f"tier {ctx.tier.name} failed before answering") from failed
        self._move(ctx, placement.fall_back(self.tiers.names, ctx.tier.name, "engine failed", why_not=self.tiers.why_not,
                                           enabled=self.resilience.fallback))

    def _place(self, ctx: RequestContext) -> None:
        """Rules 7-8 (placement.place) for the decided tier: fall back from
        a tier that cannot serve, spill from a busy one."""
        d, names = ctx.decision, self.tiers.names
        moved = placement.place(
            names, ctx.tier.name, d.reason, d.p_complex, self.policy.live_cuts, own_threshold=ctx.req.threshold is not None,
            rule=self.spill, fallback=self.resilience.fallback, why_not=self.tiers.why_not,
            busy=lambda name: self.tiers[name].busy_reason(self.spill.queue_seconds, ctx.req.caller),
            fits=lambda name: allows(ctx.req.sampling, self.tiers[name].config.sampling, name))
        if moved is not None:
            self._move(ctx, moved)

    def _move(self, ctx: RequestContext, moved: placement.Moved) -> None:
        """Carry out a spill or a fallback: the other tier answers, with its
        own defaults (a fallback clamps to its cap: the request was valid
        for the tier it was meant for), and nothing is cached under the key
        of the tier it was meant for."""
        other = self.tiers[moved.tier]
        report_move(ctx, other.name, moved, self.metrics, self.stats)
        ctx.fell_back = ctx.fell_back or moved.reason == "fallback"
        ctx.decision = replace(ctx.decision, tier=other.name, model=other.model, reason=moved.reason, degraded=moved.degraded)
        ctx.lookup.storable = False
        ctx.tier = other
        ctx.sampling = effective_sampling(ctx.req.sampling, other.config.sampling, other.name, clamp=moved.reason == "fallback")

    async def _stream(self, ctx: RequestContext, search: asyncio.Task | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        """Generate on `ctx.tier`. Raises EngineFailedEarly if the engine fails
        before producing any text (the caller may fall back), SemanticHit if
        the overlapped `search` answers before any text is sent."""
        tier = ctx.tier
        self._on_engine_start(tier.name)  # live traffic first: a shadow there stops now
        prompt = await prompt_for(ctx, self._chunk_chars)
        progress = Progress(self.metrics.itl_seconds.labels(tier.name))
        gauge = self.metrics.in_flight.labels(tier.name)
        gauge.inc()
        ctx.timings.routing_ms = (time.perf_counter() - ctx.arrived) * 1e3
        self.metrics.overhead_seconds.labels(tier.name).observe(ctx.timings.routing_ms / 1e3)
        self.metrics.engine_requests.labels(tier.name).inc()
        ceiling = Ceiling(tier)
        interval = StreamInterval(tier.config.stream_interval)
        stream = tier.engine.generate(prompt, ctx.sampling, ctx.req.request_id).__aiter__()
        self.pressure.began()
        try:
            while (chunk := await next_chunk(ctx, stream, search, ceiling)) is not None:
                search = None  # settled, a miss
                if self.tiers.past_drain_deadline():
                    raise Unavailable("the server shut down before this answer finished")
                progress.took(ctx, chunk)
                if chunk.delta:
                    ctx.parts.append(chunk.delta)
                    if ctx.req.stream and (text := interval.add(chunk)):
                        # The decision goes out with the first text, once the tier is sure.
                        for event in ctx.announce():
                            yield event
                        yield DeltaEvent(text)
                        if self.pressure.busy and not chunk.finished:
                            # The loop is saturated: what comes meanwhile goes merged (observe/pace.py).
                            await self.pressure.calm()
        finally:
            self.pressure.ended()
            ceiling.close()
            gauge.dec()
            await stream.aclose()
        tier.succeeded()
        for event in ctx.announce():
            yield event
        if ctx.req.stream and (held := interval.rest()):
            yield DeltaEvent(held)
        if not ctx.req.stream and ctx.parts:
            yield DeltaEvent("".join(ctx.parts))  # held back until the answer was whole
        usage = Usage(len(prompt.ids), progress.completion_tokens)
        if self.cache is not None and ctx.lookup.status == MISS:
            # Only here, after a normal end: a cancelled stream never gets this far.
            self.cache.store(ctx.lookup, CachedAnswer("".join(ctx.parts), progress.finish_reason, usage.prompt_tokens, usage.completion_tokens))
        yield self._finish(ctx, progress.finish_reason, usage, ctx.first_token_at)

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
        """Timings and price, once, for a generated and a replayed answer
        alike; then one record of the finished request to the listeners."""
        done = time.perf_counter()
        first = first_token_at or done
        t = ctx.timings
        t.ttft_ms = (first - ctx.arrived) * 1e3
        t.generate_ms = (done - first) * 1e3
        t.total_ms = (done - ctx.arrived) * 1e3
        status = ctx.lookup.status
        replayed = status in (EXACT, SEMANTIC)
        cost = self.costs.answered(ctx.decision.tier, usage, cached=replayed)
        usage = replace(usage, cost=cost.cost, cost_if_most_capable=cost.if_most_capable)
        self.listeners(Finished(ctx.req, ctx.decision, "".join(ctx.parts), usage, t, status, not replayed, ctx.span, ctx.arrived, done,
                                first_token_at))
        return FinalEvent(finish_reason, usage, t, ctx.sampling, CacheResult(status, ctx.lookup.similarity), ctx.retrieval)
