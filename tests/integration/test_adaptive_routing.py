"""Adaptive routing on the real CPU engines: a target share held through a
shift in the traffic mix, and the live cut visible in every answer, in
/metrics and in GetStats. (Spill's gain is a benchmark section, not a timed
test: `python -m benchmarks --only spill`.)"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import _test_config, start_server, stop_server

WINDOW = 200
TARGET = 0.30

COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Canada", "Vietnam", "Poland", "Ghana", "Nepal",
             "Brazil", "Spain", "India", "Mexico", "Iceland", "Morocco", "Italy", "Greece", "Turkey", "Sweden", "Cuba", "Laos"]
THINGS = ["a cat", "the moon", "a violin", "rain", "a bicycle", "coffee", "a glacier", "the Nile", "a tulip", "copper",
          "a whale", "bread", "a comet", "snow", "a lemon", "silk", "a volcano", "jazz", "a penguin", "salt"]
ASKS = ["What is the capital of {c}?", "What colour is {t}?", "Who is the president of {c}?", "What language is spoken in {c}?",
        "Name one animal that lives in {c}.", "Is {t} heavier than {t2}?", "what is {n} plus {m}", "How do you spell {t}?",
        "Where is {c}?", "hi! is {t} bigger than {t2}?", "What currency does {c} use?", "Define {t}."]
STEPS = [
    "A shop sells {n} apples on Monday and {m} more on Tuesday than on Monday.",
    "On Wednesday it sells half as many as on Tuesday, and each apple costs ${k}.",
    "It pays ${m} in rent and spends a third of what is left on wages.",
    "A train leaves at {k}:00 at {n} km/h and a second one follows {m} hours later at {n2} km/h.",
    "The tank holds {n} litres, loses {k} litres an hour and is refilled with {m} litres every {k2} hours.",
    "Each of the {n} workers packs {m} boxes a day, but on Fridays only {k} of them come in.",
]
TASKS = [
    "How much money does the shop have left at the end of the week?",
    "How far from the station does the second train catch up, and at what time?",
    "Explain, step by step, when the tank first runs dry.",
    "Compare the economies of {c} and {c2}: explain the differences in trade, industry and education, with examples.",
    "Write a Python function that returns the longest increasing subsequence of a list, and prove it correct.",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(c=rng.choice(COUNTRIES), c2=rng.choice(COUNTRIES), t=rng.choice(THINGS), t2=rng.choice(THINGS),
                           n=rng.randint(3, 90), n2=rng.randint(3, 90), m=rng.randint(3, 90), k=rng.randint(2, 12), k2=rng.randint(2, 12))


def simple_question(rng: random.Random) -> str:
    return _fill(rng.choice(ASKS), rng)


def complex_question(rng: random.Random) -> str:
    """One to four steps of a word problem, then what to find or do: varied
    in length and words, so the scores do not tie in blocks."""
    steps = rng.sample(STEPS, rng.randint(1, 4))
    return " ".join(_fill(s, rng) for s in [*steps, rng.choice(TASKS)])


def mix(n: int, complex_share: float, rng: random.Random) -> list[str]:
    return [complex_question(rng) if rng.random() < complex_share else simple_question(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adaptive")
    # A short window, so the test sends few requests: a correction horizon of
    # 1/32 of it (6 decisions) holds +-2 points at 200 (docs/routing.md).
    routing = {"target_share": {"large": TARGET}, "window_requests": WINDOW, "min_samples": 50, "correction": 1 / 32}
    server = start_server(_test_config(tmp, routing=routing), tmp)
    yield server
    assert stop_server(server) == 0


def test_the_large_share_returns_to_the_target_within_one_window_after_the_mix_shifts(adaptive):
    """Two windows of mostly simple questions, then two of mostly complex
    ones. Each window's requests are sent together (8 at a time) and all
    answered before the next window's start, so the router's own window is
    exactly the one counted here. Every window but the first (warming up) and
    the one where the mix shifts sends 30 % +- 2 points to the large tier."""
    rng = random.Random(20261126)
    windows = [mix(WINDOW, 0.15, rng), mix(WINDOW, 0.15, rng), mix(WINDOW, 0.85, rng), mix(WINDOW, 0.85, rng)]
    client, decisions, shares = adaptive.client, [], []
    with ThreadPoolExecutor(8) as pool:
        for questions in windows:
            answers = list(pool.map(lambda q: client.generate(q, max_tokens=1, cache="off"), questions))
            chunk = [a.decision for a in answers]
            decisions += chunk
            shares.append(sum(d.tier_name == "large" for d in chunk) / WINDOW)
            # The router's realised share over its window is this window's.
            assert {t.tier_name: t for t in client.stats().tiers}["large"].window_share == pytest.approx(shares[-1])
    assert abs(shares[1] - TARGET) <= 0.02 and abs(shares[3] - TARGET) <= 0.02, shares
    # What the configured cut would have sent, from the same scores: the mix
    # really shifted, and the control did the work.
    fixed = [sum(d.p_complex >= 0.45 for d in decisions[i:i + WINDOW]) / WINDOW for i in range(0, len(decisions), WINDOW)]
    assert fixed[3] - fixed[1] > 0.4, fixed
    # Each answer names the rule and the cut its score was held to.
    late = decisions[-WINDOW:]
    assert {d.reason for d in late} == {"target_share"}
    assert all((d.p_complex >= d.threshold) == (d.tier_name == "large") for d in late)
    # The live cut, the target and the window's share, as an operator sees them.
    large = {t.tier_name: t for t in client.stats().tiers}["large"]
    assert large.target_share == pytest.approx(TARGET)
    assert adaptive.metric_value("router_cut_point", tier="large") == pytest.approx(large.cut_point)
    assert adaptive.metric_value("router_window_share", tier="large") == pytest.approx(shares[-1])
    assert adaptive.metric_value("router_target_share", tier="large") == pytest.approx(TARGET)
    assert "target share: cut into large" in adaptive.log()


def test_a_request_threshold_or_route_still_wins_and_classify_shows_the_live_cut(adaptive):
    client = adaptive.client
    live_cut = client.stats().tiers[1].cut_point
    c = client.classify("What is the capital of Peru?")
    assert c.decision.reason == "target_share" and c.decision.threshold == pytest.approx(live_cut, abs=1e-6)
    r = client.generate("What is the capital of Peru?", threshold=0.0, max_tokens=1, cache="off")
    assert (r.decision.tier_name, r.decision.reason, r.decision.threshold) == ("large", "classifier", 0.0)
    r = client.generate("What is the capital of Peru?", route="small", max_tokens=1, cache="off")
    assert (r.decision.tier_name, r.decision.reason) == ("small", "override")
