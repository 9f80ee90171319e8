"""What routing saves: every answer's cost on the tier that gave it, beside
what the most capable tier would have cost for the same tokens.

Prices come from each tier's `cost` in the profile (per 1,000 prompt and
per 1,000 completion tokens, in any unit the operator likes: dollars,
GPU-seconds). A cached answer costs nothing and is counted as saved in full:
the most capable tier would have generated it. Shadow requests
(routing.shadow) are not answers and are not counted here.

The totals' one owner: GetStats, `triage stats` and the Prometheus
counters `router_cost_total{tier}` and `router_cost_if_most_capable_total`
read them from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import CostConfig
from ..types import Usage


def charge(price: CostConfig, usage: Usage) -> float:
    """The answer's tokens at a tier's price."""
    return (usage.prompt_tokens * price.prompt_per_1k + usage.completion_tokens * price.completion_per_1k) / 1000.0


@dataclass(frozen=True)
class Cost:
    """One answer's: what it cost, and what the most capable tier would have."""

    cost: float
    if_most_capable: float

    @property
    def saved_share(self) -> float:
        return 1.0 - self.cost / self.if_most_capable if self.if_most_capable > 0 else 0.0


class Costs:
    def __init__(self, prices: Mapping[str, CostConfig], most_capable: str, metrics=None):
        self.prices, self.most_capable = dict(prices), most_capable
        self.by_tier = {tier: 0.0 for tier in prices}
        self.if_most_capable = 0.0
        self._metrics = metrics

    def answered(self, tier: str, usage: Usage, cached: bool) -> Cost:
        """Count one answer (its tokens, as reported to the caller)."""
        cost = Cost(0.0 if cached else charge(self.prices[tier], usage), charge(self.prices[self.most_capable], usage))
        self.by_tier[tier] += cost.cost
        self.if_most_capable += cost.if_most_capable
        if self._metrics is not None:
            self._metrics.cost.labels(tier).inc(cost.cost)
            self._metrics.cost_if_most_capable.inc(cost.if_most_capable)
        return cost

    @property
    def total(self) -> float:
        return sum(self.by_tier.values())

    @property
    def saved_share(self) -> float:
        """1 - cost / cost if every answer had come from the most capable tier."""
        return Cost(self.total, self.if_most_capable).saved_share
