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
from typing import AsyncIterator, Mapping

from .config import TierConfig
from .engine import Engine
from .errors import InvalidArgument, Unavailable
from .metrics import RouterMetrics
from .policy import RoutingPolicy
from .stats import Stats
from .types import (
    ChatMessage,
    Decision,
    DecisionEvent,
    DeltaEvent,
    FinalEvent,
    GenerateInput,
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
    def __init__(self, policy: RoutingPolicy, engines: Mapping[str, Engine], tiers: Mapping[str, TierConfig], metrics: RouterMetrics):
        self.policy = policy
        self.engines = engines
        self.tiers = tiers
        self.metrics = metrics
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

        decision, classify_ms = self.policy.decide(req.messages, req.route, req.threshold)
        self.metrics.classify_seconds.observe(classify_ms / 1e3)
        if not math.isnan(decision.p_complex):
            self.metrics.p_complex.observe(decision.p_complex)
        tier = self.tiers[decision.tier]
        engine = self.engines[decision.tier]
        if not engine.ready:
            raise Unavailable(f"tier {decision.tier} is not ready")

        sampling = effective_sampling(req.sampling, tier.sampling, tier.name)
        prompt_ids = engine.render(req.messages)
        room = tier.max_model_len - len(prompt_ids)
        if room < 1:
            raise InvalidArgument(
                "messages", f"the prompt is {len(prompt_ids)} tokens; tier {tier.name} holds at most {tier.max_model_len - 1}"
            )
        if sampling.max_tokens > room:
            # The context cannot hold more; say so in effective_sampling.
            from dataclasses import replace

            sampling = replace(sampling, max_tokens=room)

        yield DecisionEvent(decision)

        timings = Timings(classify_ms=classify_ms)
        first_token_at = last_token_at = None
        completion_tokens = 0
        finish_reason = "stop"
        m = self.metrics
        itl = m.itl_seconds.labels(tier.name)
        gauge = m.in_flight.labels(tier.name)
        gauge.inc()
        m.overhead_seconds.labels(tier.name).observe(time.perf_counter() - arrived)
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
        self._record(req, decision, usage, timings)
        yield FinalEvent(finish_reason, usage, timings, sampling)

    def _record(self, req: GenerateInput, decision: Decision, usage: Usage, t: Timings) -> None:
        m, tier = self.metrics, decision.tier
        m.ttft_seconds.labels(tier).observe(t.ttft_ms / 1e3)
        m.queue_seconds.labels(tier).observe(t.queue_ms / 1e3)
        m.generate_seconds.labels(tier).observe(t.generate_ms / 1e3)
        m.prompt_tokens.labels(tier).inc(usage.prompt_tokens)
        m.completion_tokens.labels(tier).inc(usage.completion_tokens)
        m.prompt_tokens_per_request.labels(tier).observe(usage.prompt_tokens)
        m.completion_tokens_per_request.labels(tier).observe(usage.completion_tokens)
        self.stats.record_generation(tier, t.total_ms, t.ttft_ms, t.generate_ms, usage.completion_tokens)
        # One structured line per request: sizes and times, never the text.
        log.info(
            json.dumps(
                {
                    "request_id": req.request_id,
                    "tier": tier,
                    "reason": decision.reason,
                    "p_complex": None if math.isnan(decision.p_complex) else round(decision.p_complex, 4),
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    **{k: round(v, 2) for k, v in vars(t).items()},
                }
            )
        )
