"""The router core: validate -> classify -> pick tier -> generate.

Pure Python over the `Engine` protocol: no grpc here. `generate` yields one
DecisionEvent, DeltaEvents as text arrives, then one FinalEvent; the servicer
turns these into a unary answer or a stream, so both RPCs share one path.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from typing import AsyncIterator, Mapping

from .config import TierConfig
from .engine import Engine
from .cache import BYPASS, EXACT, MISS, SEMANTIC, CachedAnswer, Lookup, ResponseCache, replay_deltas
from .errors import FailedPrecondition, InvalidArgument, Unavailable
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

# A token is at least one character for every tokenizer we serve, and rarely
# more than ~8; 16 characters per token of context is a safe upper bound for
# the pre-tokenisation size check.
_CHARS_PER_TOKEN_BOUND = 16


class Router:
    def __init__(self, policy: RoutingPolicy, engines: Mapping[str, Engine], tiers: Mapping[str, TierConfig], metrics: RouterMetrics,
                 cache: ResponseCache | None = None, retrieval: RetrievalService | None = None):
        self.policy = policy
        self.engines = engines
        self.tiers = tiers
        self.metrics = metrics
        self.cache = cache
        self.retrieval = retrieval
        self.stats = Stats(tuple(tiers))
        self._max_chars = max(t.max_model_len for t in tiers.values()) * _CHARS_PER_TOKEN_BOUND

    def classify(self, messages: tuple[ChatMessage, ...], threshold: float | None) -> tuple[Decision, float]:
        check_messages(messages, self._max_chars)
        check_threshold(threshold)
        decision, classify_ms = self.policy.decide(messages, None, threshold)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        return decision, classify_ms

    async def generate(self, req: GenerateInput, arrived: float | None = None) -> AsyncIterator[DecisionEvent | DeltaEvent | FinalEvent]:
        arrived = time.perf_counter() if arrived is None else arrived
        check_messages(req.messages, self._max_chars)
        check_sampling(req.sampling)
        check_threshold(req.threshold)
        if req.route is not None and req.route not in self.engines:
            raise InvalidArgument("route", f"unknown tier {req.route!r}")

        # Classify the user's own question, before any retrieved context.
        decision, classify_ms = self.policy.decide(req.messages, req.route, req.threshold)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        if not math.isnan(decision.p_complex):
            self.metrics.p_complex.observe(decision.p_complex)
        tier = self.tiers[decision.tier]
        engine = self.engines[decision.tier]
        sampling = effective_sampling(req.sampling, tier.sampling, tier.name)
        timings = Timings(classify_ms=classify_ms)

        hits: list = []
        if self._wants_retrieval(req, tier.name):
            hits, timings.retrieve_ms = await self.retrieval.retrieve(question_text(req.messages), req.retrieval_top_k)
            self.metrics.retrieve_seconds.observe(timings.retrieve_ms / 1e3)

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

        if not engine.ready:
            raise Unavailable(f"tier {decision.tier} is not ready")
        prompt_ids, hits, dropped = self._render(req.messages, hits, engine, tier, sampling.max_tokens)
        room = tier.max_model_len - len(prompt_ids)
        if sampling.max_tokens > room:
            sampling = replace(sampling, max_tokens=room)  # what the context holds; effective_sampling says so
        retrieval = RetrievalResult(tuple(hits), dropped) if self._wants_retrieval(req, tier.name) else None

        yield DecisionEvent(decision)

        first_token_at = last_token_at = None
        completion_tokens = 0
        finish_reason = "stop"
        parts: list[str] = []
        m = self.metrics
        itl = m.itl_seconds.labels(tier.name)
        gauge = m.in_flight.labels(tier.name)
        gauge.inc()
        m.overhead_seconds.labels(tier.name).observe(time.perf_counter() - arrived)
        m.engine_requests.labels(tier.name).inc()
        try:
            async for chunk in engine.generate(prompt_ids, sampling, req.request_id):
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
                    parts.append(chunk.delta)
                    yield DeltaEvent(chunk.delta)
                if chunk.finished:
                    finish_reason = chunk.finish_reason or "stop"
        finally:
            gauge.dec()

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

    def _render(self, messages, hits: list, engine: Engine, tier: TierConfig, max_tokens: int) -> tuple[list[int], list, int]:
        """Prompt tokens, with as many retrieved chunks as the tier's context
        holds next to the answer's budget; the lowest-ranked go first."""
        dropped = 0
        while True:
            prompt_ids = engine.render(with_sources(messages, hits, self.retrieval.max_chunk_chars) if hits else messages)
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
