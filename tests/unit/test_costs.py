"""Savings accounting (server/observe/costs.py) and the tiers' `cost` in the profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, CostConfig, load
from server.observe.costs import Costs
from server.types import Usage

ROOT = Path(__file__).resolve().parents[2]


def test_an_answer_costs_its_tokens_at_its_tiers_price_and_a_cached_one_nothing():
    costs = Costs({"small": CostConfig(0.01, 0.02), "large": CostConfig(0.05, 0.1)}, "large")
    small = costs.answered("small", Usage(1000, 500), cached=False)
    assert (small.cost, small.if_most_capable) == (pytest.approx(0.02), pytest.approx(0.1))
    assert small.saved_share == pytest.approx(0.8)
    hit = costs.answered("small", Usage(2000, 0), cached=True)
    assert (hit.cost, hit.if_most_capable, hit.saved_share) == (0.0, pytest.approx(0.1), 1.0)
    large = costs.answered("large", Usage(100, 100), cached=False)
    assert large.saved_share == 0.0
    assert costs.by_tier == {"small": pytest.approx(0.02), "large": pytest.approx(0.015)}
    assert costs.saved_share == pytest.approx(1 - 0.035 / 0.215)


def test_without_prices_nothing_is_saved_or_divided_by_zero():
    costs = Costs({"small": CostConfig(), "large": CostConfig()}, "large")
    costs.answered("small", Usage(10, 10), cached=False)
    assert (costs.total, costs.saved_share) == (0.0, 0.0)


@pytest.mark.parametrize("cost", ["{prompt_per_1k: -1}", "{prompt_per_1k: .nan}", "{completion_per_1k: yes}", "3", "{per_token: 1}"])
def test_a_bad_price_is_refused_naming_the_tier(cost):
    with pytest.raises(ConfigError, match=r"tiers\.small\.cost"):
        load(ROOT / "config/cpu.yaml", [f"tiers.small.cost={cost}"])
