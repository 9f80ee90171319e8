"""In-memory request statistics behind the GetStats RPC.

Prometheus is the source for dashboards; this is the quick human answer to
"what has this router been doing" without one. Bounded: latencies for p95
are kept for the most recent 4,096 requests per tier.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

WINDOW = 4096


@dataclass
class TierTotals:
    requests: int = 0
    latency_ms_sum: float = 0.0
    ttft_ms_sum: float = 0.0
    completion_tokens: int = 0
    generate_s: float = 0.0
    recent_latency_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    spilled_out: int = 0
    spilled_in: int = 0
    feedback: int = 0

    def p95_ms(self) -> float:
        return float(np.percentile(self.recent_latency_ms, 95)) if self.recent_latency_ms else 0.0


@dataclass(frozen=True)
class TierReport:
    """A tier's figures as GetStats reports them."""

    requests: int
    share: float  # of all completed generations
    mean_latency_ms: float
    p95_latency_ms: float
    mean_ttft_ms: float
    completion_tokens: int
    tokens_per_second: float
    spilled_out: int
    spilled_in: int
    feedback: int


class Stats:
    def __init__(self, tiers: tuple[str, ...], clock=time.monotonic):
        self._clock = clock
        self.started = clock()
        self.tiers = {t: TierTotals() for t in tiers}
        self.by_code: Counter[str] = Counter()
        self.cache: Counter[str] = Counter()  # MISS / EXACT / SEMANTIC / BYPASS

    def uptime(self) -> float:
        return self._clock() - self.started

    def record_status(self, code: str) -> None:
        self.by_code[code] += 1

    def on_finished(self, finished) -> None:
        """The listener (finished.py): a generated answer's figures, and every answer's cache status."""
        if finished.generated:
            t = finished.timings
            self.record_generation(finished.decision.tier, t.total_ms, t.ttft_ms, t.generate_ms, finished.usage.completion_tokens)
        self.record_cache(finished.cache_status)

    def record_cache(self, status: str) -> None:
        self.cache[status] += 1

    def cache_lookups(self) -> int:
        return sum(n for status, n in self.cache.items() if status != "BYPASS")

    def hit_rate(self, status: str) -> float:
        lookups = self.cache_lookups()
        return self.cache[status] / lookups if lookups else 0.0

    def record_generation(self, tier: str, total_ms: float, ttft_ms: float, generate_ms: float, completion_tokens: int) -> None:
        t = self.tiers[tier]
        t.requests += 1
        t.latency_ms_sum += total_ms
        t.ttft_ms_sum += ttft_ms
        t.completion_tokens += completion_tokens
        t.generate_s += generate_ms / 1e3
        t.recent_latency_ms.append(total_ms)

    def record_spill(self, from_tier: str, to_tier: str) -> None:
        self.tiers[from_tier].spilled_out += 1
        self.tiers[to_tier].spilled_in += 1

    def record_feedback(self, tier: str) -> None:
        self.tiers[tier].feedback += 1

    def completed(self) -> int:
        return sum(t.requests for t in self.tiers.values())

    def above_cheapest_share(self) -> float:
        """The share of completed generations some tier above the cheapest answered."""
        completed = self.completed()
        cheapest = next(iter(self.tiers.values())).requests if self.tiers else 0
        return (completed - cheapest) / completed if completed else 0.0

    def tier_report(self, tier: str) -> TierReport:
        t, completed = self.tiers[tier], self.completed()
        n = t.requests
        return TierReport(
            requests=n, share=n / completed if completed else 0.0,
            mean_latency_ms=t.latency_ms_sum / n if n else 0.0, p95_latency_ms=t.p95_ms(),
            mean_ttft_ms=t.ttft_ms_sum / n if n else 0.0, completion_tokens=t.completion_tokens,
            tokens_per_second=t.completion_tokens / t.generate_s if t.generate_s > 0 else 0.0,
            spilled_out=t.spilled_out, spilled_in=t.spilled_in, feedback=t.feedback)
