"""The router core: validate -> classify -> pick tier -> generate.

Pure Python over the `Engine` protocol: no grpc here. `generate` yields one
DecisionEvent, DeltaEvents as text arrives, then one FinalEvent; the servicer
turns these into a unary answer or a stream, so both RPCs share one path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import replace
from typing import AsyncIterator, Mapping

from .admission import Gate
from .breaker import CircuitBreaker
from .config import LimitsConfig, ResilienceConfig, TierConfig
from .engine import Engine
from .cache import BYPASS, EXACT, MISS, SEMANTIC, CachedAnswer, Lookup, ResponseCache, replay_deltas
from .errors import DeadlineExceeded, EngineFailure, FailedPrecondition, InvalidArgument, RouterError, Unavailable
from .metrics import RouterMetrics
from .policy import RoutingPolicy, question_text
from .retrieval import RetrievalService, with_sources
from .stats import Stats
from .types import (
    CacheResult,
    ChatMessage,
    Decision,
    DecisionEvent,
    DeltaEvent,
    FinalEvent,
    GenerateInput,
    RetrievalResult,
    Timings,
    Usage,
)
from .validation import check_messages, check_sampling, check_threshold, effective_sampling

log = logging.getLogger("triage.request")


class EngineFailedEarly(Exception):
    """The engine failed before producing text: another tier may still answer."""


class Router:
    def __init__(self, policy: RoutingPolicy, engines: Mapping[str, Engine], tiers: Mapping[str, TierConfig], metrics: RouterMetrics,
                 cache: ResponseCache | None = None, retrieval: RetrievalService | None = None,
                 limits: LimitsConfig | None = None, resilience: ResilienceConfig | None = None):
        self.policy = policy
        self.engines = engines
        self.tiers = tiers
        self.metrics = metrics
        self.cache = cache
        self.retrieval = retrieval
        self.limits = limits or LimitsConfig()
        self.resilience = resilience or ResilienceConfig()
        self.breakers = {n: CircuitBreaker(self.resilience.failure_threshold, self.resilience.cooldown_s) for n in tiers}
        self.gates = {"all": Gate("router", self.limits.max_in_flight, self.limits.max_queued)}
        self.gates.update({n: Gate(f"tier {n}", t.max_in_flight, t.max_queued) for n, t in tiers.items()})
        self.stats = Stats(tuple(tiers))
        # Set when shutting down: requests still generating after this
        # monotonic time end with UNAVAILABLE at their next token.
        self.drain_deadline: float | None = None

    def classify(self, messages: tuple[ChatMessage, ...], threshold: float | None) -> tuple[Decision, float]:
        return self._decide(messages, None, threshold)

    def _decide(self, messages: tuple[ChatMessage, ...], route: str | None, threshold: float | None) -> tuple[Decision, float]:
        """Check what the decision needs, make it on the user's own question, time it."""
        check_messages(messages, self.limits)
        check_threshold(threshold)
        decision, classify_ms = self.policy.decide(messages, route, threshold)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        return decision, classify_ms

    # -- which tier can serve --------------------------------------------------

    def _why_not(self, tier: str) -> str | None:
        """None if the tier can take a request now, else why not."""
        if not self.engines[tier].ready:
            return "engine not ready"
        if not self.breakers[tier].allow():
            return "circuit open"
        return None

    def _other(self, tier: str) -> str:
        return next(t for t in self.tiers if t != tier)

    def _fall_back(self, decision: Decision, why: str) -> Decision:
        """The other tier, marked degraded, or UNAVAILABLE if it cannot serve either."""
        other = self._other(decision.tier)
        other_why = self._why_not(other) if self.resilience.fallback else "fallback disabled"
        if other_why is not None:
            raise Unavailable(f"no tier can serve: {decision.tier}: {why}; {other}: {other_why}")
        self.metrics.degraded.labels("tier_unavailable").inc()
        log.warning("tier %s cannot serve (%s): falling back to %s", decision.tier, why, other)
        return replace(decision, tier=other, model=self.tiers[other].model, reason="fallback", degraded=True)

    def _choose(self, decision: Decision) -> Decision:
        why = self._why_not(decision.tier)
        return decision if why is None else self._fall_back(decision, why)

    # -- one request -------------------------------------------------------------

    async def generate(self, req: GenerateInput, arrived: float | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        arrived = time.perf_counter() if arrived is None else arrived
        if self.drain_deadline is not None:
            raise Unavailable("the server is shutting down")
        check_sampling(req.sampling)
        if req.route is not None and req.route not in self.engines:
            raise InvalidArgument("route", f"unknown tier {req.route!r}")

        # Classify the user's own question, before any retrieved context.
        decision, classify_ms = self._decide(req.messages, req.route, req.threshold)
        if not math.isnan(decision.p_complex):
            self.metrics.p_complex.observe(decision.p_complex)
        tier = self.tiers[decision.tier]
        sampling = effective_sampling(req.sampling, tier.sampling, tier.name)  # INVALID_ARGUMENT before anything else
        timings = Timings(classify_ms=classify_ms)

        hits: list = []
        retrieving = self._wants_retrieval(req, tier.name)
        if retrieving:
            hits, timings.retrieve_ms = await self.retrieval.retrieve(question_text(req.messages), req.retrieval_top_k)
            self.metrics.retrieve_seconds.observe(timings.retrieve_ms / 1e3)

        # A cached answer needs no engine: look it up before asking whether one can serve.
        lookup = Lookup(BYPASS)
        if self.cache is not None:
            keyed = with_sources(req.messages, hits, self.retrieval.max_chunk_chars) if hits else req.messages
            lookup = await self.cache.lookup(req.cache_mode, keyed, sampling, tier.name, tier.model, allow_semantic=not hits)
            timings.cache_ms = lookup.ms
        self.stats.record_cache(lookup.status)
        if lookup.answer is not None:
            async for event in self._replay(req, decision, lookup, sampling, timings, hits, arrived):
                yield event
            return

        decision = self._choose(decision)
        async with self.gates["all"].slot(), self.gates[decision.tier].slot():
            if self.drain_deadline is not None:
                raise Unavailable("the server is shutting down")
            retried = False
            while True:
                if decision.tier != tier.name:  # a fallback tier: its own defaults, its cap (clamped, not refused)
                    tier = self.tiers[decision.tier]
                    sampling = effective_sampling(req.sampling, tier.sampling, tier.name, clamp=True)
                try:
                    async for event in self._run(req, decision, sampling, hits if retrieving else None, timings, arrived, lookup):
                        yield event
                    return
                except EngineFailedEarly as failed:
                    # Before the first token the other tier may still answer; never after.
                    if retried or not self.resilience.fallback:
                        raise Unavailable(f"tier {decision.tier} failed before answering") from failed
                    retried = True
                    decision = self._fall_back(decision, "engine failed")
                    lookup = Lookup(BYPASS)  # not stored under the first tier's key

    async def _run(self, req, decision, sampling, hits, timings, arrived, lookup):
        """Generate on `decision.tier` with that tier's `sampling`. Raises
        EngineFailedEarly if the engine fails before producing any text (the
        caller may fall back)."""
        tier, engine, breaker = self.tiers[decision.tier], self.engines[decision.tier], self.breakers[decision.tier]
        retrieving = hits is not None
        try:
            prompt_ids, hits, dropped = await self._render(req.messages, hits or [], engine, tier, sampling.max_tokens)
        except EngineFailure as exc:  # e.g. a remote tier's replica went away between health checks
            breaker.failure()
            log.error("request %s: tier %s could not render the prompt: %s", req.request_id, tier.name, exc)
            raise EngineFailedEarly(tier.name) from exc
        room = tier.max_model_len - len(prompt_ids)
        if sampling.max_tokens > room:
            sampling = replace(sampling, max_tokens=room)  # what the context holds; effective_sampling says so
        retrieval = RetrievalResult(tuple(hits), dropped) if retrieving else None

        first_token_at = last_token_at = None
        completion_tokens = 0
        finish_reason = "stop"
        parts: list[str] = []
        announced = False
        m = self.metrics
        itl = m.itl_seconds.labels(tier.name)
        gauge = m.in_flight.labels(tier.name)
        gauge.inc()
        m.overhead_seconds.labels(tier.name).observe(time.perf_counter() - arrived)
        m.engine_requests.labels(tier.name).inc()
        ceiling = time.monotonic() + tier.generation_timeout_s
        stream = engine.generate(prompt_ids, sampling, req.request_id).__aiter__()
        try:
            while True:
                try:
                    # The ceiling covers only the wait on the engine, so its
                    # cancellation lands inside the engine call (which aborts
                    # the request) and never inside the caller's write.
                    async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, ceiling - time.monotonic())):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise DeadlineExceeded(f"tier {tier.name} stopped generating at its {tier.generation_timeout_s:g} s ceiling") from None
                except (RouterError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    breaker.failure()
                    log.error("request %s: tier %s engine failed: %s", req.request_id, tier.name, exc, exc_info=exc)
                    if not parts:
                        raise EngineFailedEarly(tier.name) from exc
                    raise Unavailable(f"tier {tier.name} failed while answering") from None
                if self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
                    raise Unavailable("the server shut down before this answer finished")
                now = time.perf_counter()
                new_tokens = chunk.completion_tokens - completion_tokens
                completion_tokens = chunk.completion_tokens
                if chunk.queue_s is not None:
                    timings.queue_ms = chunk.queue_s * 1e3
                if new_tokens > 0:
                    if first_token_at is None:
                        first_token_at = now
                    elif last_token_at is not None:
                        gap = (now - last_token_at) / new_tokens
                        for _ in range(new_tokens):
                            itl.observe(gap)
                    last_token_at = now
                if chunk.delta:
                    if not announced:  # the decision goes out with the first text, once the tier is sure
                        announced = True
                        yield DecisionEvent(decision)
                    parts.append(chunk.delta)
                    yield DeltaEvent(chunk.delta)
                if chunk.finished:
                    finish_reason = chunk.finish_reason or "stop"
        finally:
            gauge.dec()
            await stream.aclose()
        breaker.success()
        if not announced:
            yield DecisionEvent(decision)

        done = time.perf_counter()
        first_token_at = first_token_at or done
        timings.ttft_ms = (first_token_at - arrived) * 1e3
        timings.generate_ms = (done - first_token_at) * 1e3
        timings.total_ms = (done - arrived) * 1e3
        usage = Usage(len(prompt_ids), completion_tokens)
        if self.cache is not None and lookup.status == MISS:
            # Only here, after a normal end: a cancelled stream never gets this far.
            self.cache.store(lookup, CachedAnswer("".join(parts), finish_reason, usage.prompt_tokens, usage.completion_tokens))
        self._record(req, decision, usage, timings, lookup.status)
        yield FinalEvent(finish_reason, usage, timings, sampling, CacheResult(lookup.status, lookup.similarity), retrieval)

    def _wants_retrieval(self, req: GenerateInput, tier: str) -> bool:
        wanted = req.retrieval if req.retrieval is not None else (self.retrieval is not None and tier in self.retrieval.default_tiers)
        if wanted and self.retrieval is None:
            raise FailedPrecondition("retrieval: this server has no document index configured (retrieval.index)")
        return bool(wanted)

    async def _render(self, messages, hits: list, engine: Engine, tier: TierConfig, max_tokens: int) -> tuple[list[int], list, int]:
        """Prompt tokens, with as many retrieved chunks as the tier's context
        holds next to the answer's budget; the lowest-ranked go first."""
        dropped = 0
        while True:
            prompt_ids = await engine.render(with_sources(messages, hits, self.retrieval.max_chunk_chars) if hits else messages)
            if not hits or len(prompt_ids) + max_tokens <= tier.max_model_len:
                break
            hits = hits[:-1]
            dropped += 1
        if len(prompt_ids) >= tier.max_model_len:
            raise InvalidArgument("messages", f"the prompt is {len(prompt_ids)} tokens; tier {tier.name} holds at most {tier.max_model_len - 1}")
        return prompt_ids, hits, dropped

    async def _replay(self, req, decision, lookup, sampling, timings, hits, arrived):
        """A cached answer, through the same events as a generated one."""
        answer = lookup.answer
        yield DecisionEvent(decision)
        first = time.perf_counter()
        for piece in replay_deltas(answer.text):
            yield DeltaEvent(piece)
        done = time.perf_counter()
        timings.ttft_ms = (first - arrived) * 1e3
        timings.generate_ms = (done - first) * 1e3
        timings.total_ms = (done - arrived) * 1e3
        usage = Usage(answer.prompt_tokens, answer.completion_tokens)
        self._record(req, decision, usage, timings, lookup.status)
        retrieval = RetrievalResult(tuple(hits), 0) if hits else None
        yield FinalEvent(answer.finish_reason, usage, timings, sampling, CacheResult(lookup.status, lookup.similarity), retrieval)

    def _record(self, req: GenerateInput, decision: Decision, usage: Usage, t: Timings, cache_status: str) -> None:
        m, tier = self.metrics, decision.tier
        if cache_status in (EXACT, SEMANTIC):
            # A replayed answer: its timings are not the engine's. Log it only.
            self._log(req, decision, usage, t, cache_status)
            return
        m.ttft_seconds.labels(tier).observe(t.ttft_ms / 1e3)
        m.queue_seconds.labels(tier).observe(t.queue_ms / 1e3)
        m.generate_seconds.labels(tier).observe(t.generate_ms / 1e3)
        m.prompt_tokens.labels(tier).inc(usage.prompt_tokens)
        m.completion_tokens.labels(tier).inc(usage.completion_tokens)
        m.prompt_tokens_per_request.labels(tier).observe(usage.prompt_tokens)
        m.completion_tokens_per_request.labels(tier).observe(usage.completion_tokens)
        self.stats.record_generation(tier, t.total_ms, t.ttft_ms, t.generate_ms, usage.completion_tokens)
        self._log(req, decision, usage, t, cache_status)

    @staticmethod
    def _log(req: GenerateInput, decision: Decision, usage: Usage, t: Timings, cache_status: str) -> None:
        # One structured line per request: sizes and times, never the text.
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            json.dumps(
                {
                    "request_id": req.request_id,
                    "tier": decision.tier,
                    "reason": decision.reason,
                    "cache": cache_status,
                    "p_complex": None if math.isnan(decision.p_complex) else round(decision.p_complex, 4),
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    **{k: round(v, 2) for k, v in vars(t).items()},
                }
            )
        )
