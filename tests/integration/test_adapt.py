"""The adapter loop (routing.adapt) on the real CPU engines.

A profile whose large tier answers differently from the small one for one
kind of question: its sampling stops at the first digit, so where the
answer is a number (arithmetic) its answer is cut before it and the
shadow comparison disagrees; elsewhere both tiers give the same greedy
answer and agree. With shadowing on every answer (sample 1.0):

1. outcomes that carry no failure: the fit is refused, routing unchanged;
2. arithmetic among them: a fit is adopted, arithmetic's score rises (and
   it now routes up) while the other kinds' do not;
3. the operator reverts to the prior and back, with the RPC and the CLI.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import ROOT, _test_config, start_server, stop_server
from .test_shadow import _settled

EVERY = 24
FRUITS = "apple banana cherry lemon lime grape mango peach pear plum kiwi orange melon fig".split()
ANIMALS = "cat dog horse cow sheep goat duck owl fox bear wolf frog whale shark eagle mouse".split()


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    return rng.choice([f"What is {a} plus {b}?", f"What is {a} times {b}?", f"How much is {a} minus {b}?", f"Compute {a} + {b}."])


def plain(rng: random.Random) -> str:
    return rng.choice([f"What colour is a ripe {rng.choice(FRUITS)}?", f"Is a {rng.choice(ANIMALS)} a mammal?",
                       f"Describe a {rng.choice(ANIMALS)} in a few words.", f"Where does a {rng.choice(FRUITS)} grow?"])


@pytest.fixture(scope="module")
def adapting(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    store = tmp / "feedback.sqlite"
    digits = [str(d) for d in range(10)]
    config = _test_config(tmp, store={"url": f"sqlite:///{store}"}, feedback={"keep_text": True},
                          routing={"shadow": {"enabled": True, "sample": 1.0},
                                   "adapt": {"enabled": True, "every": EVERY, "min_outcomes": 20}},
                          tiers={"large": {"sampling": {"max_tokens": 256, "max_tokens_cap": 1024, "stop": digits}}})
    server = start_server(config, tmp)
    server.tmp = tmp
    yield server
    assert stop_server(server) == 0


def _ask(server, questions: list[str]) -> None:
    for q in questions:
        answer = server.client.generate(q, route="small", max_tokens=12, cache="off")
        assert answer.decision.tier_name == "small"
        _settled(server)


def _fits(server) -> dict[str, float]:
    return {r: server.metric_value("router_adapter_fits_total", result=r) or 0.0 for r in ("adopted", "refused", "failed")}


def _wait_fits(server, total: int, timeout: float = 180) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while sum(_fits(server).values()) < total or server.client.stats().adapter.fitting:
        assert time.monotonic() < deadline, f"fits never reached {total}: {_fits(server)}\n{server.log()[-3000:]}"
        time.sleep(0.5)
    return _fits(server)


def _scores(server, questions: list[str]) -> np.ndarray:
    return np.array([server.client.classify(q).decision.p_complex for q in questions])


def test_a_refused_fit_leaves_routing_unchanged_and_an_adopted_one_learns_the_kind(adapting):
    rng = random.Random(11)
    probe_math = [arithmetic(rng) for _ in range(12)]
    probe_plain = [plain(rng) for _ in range(12)]
    math_before, plain_before = _scores(adapting, probe_math), _scores(adapting, probe_plain)

    # 1. No failures among the outcomes: nothing to learn.
    _ask(adapting, [plain(rng) for _ in range(EVERY)])
    fits = _wait_fits(adapting, 1)
    assert fits == {"adopted": 0, "refused": 1, "failed": 0}, adapting.log()[-3000:]
    stats = adapting.client.stats().adapter
    assert stats.enabled and stats.current == "" and "too few failures" in stats.last_fit
    np.testing.assert_array_equal(_scores(adapting, probe_math), math_before)
    np.testing.assert_array_equal(_scores(adapting, probe_plain), plain_before)
    assert "adapter fit refused" in adapting.log()

    # 2. Arithmetic now fails on the cheap tier (the large tier's answer differs).
    mixed = [arithmetic(rng) if i % 2 else plain(rng) for i in range(4 * EVERY)]
    for start in range(0, len(mixed), EVERY):
        _ask(adapting, mixed[start:start + EVERY])
        if _wait_fits(adapting, 2 + start // EVERY)["adopted"]:
            break
    stats = adapting.client.stats().adapter
    assert stats.current.startswith("gen-") and stats.held_out_apgr > stats.prior_held_out_apgr, (stats, adapting.log()[-3000:])
    assert adapting.metric_value("router_adapter_held_out_apgr") == pytest.approx(stats.held_out_apgr)
    math_after, plain_after = _scores(adapting, probe_math), _scores(adapting, probe_plain)
    # Most arithmetic now crosses the threshold (0.45); none did before.
    assert math_after.mean() > math_before.mean() + 0.2 and (math_after >= 0.45).mean() >= 0.75, (math_before, math_after)
    assert plain_after.mean() <= plain_before.mean() + 0.02, (plain_before, plain_after)
    routed = adapting.client.generate(probe_math[0], max_tokens=4, cache="off")
    assert routed.decision.tier_name == "large" and routed.decision.reason == "classifier"
    assert f"adapter {stats.current} adopted" in adapting.log()

    # 3. Revert to the prior (RPC), then back to the adapter (CLI).
    reverted = adapting.client.revert_adapter("prior")
    assert reverted.current == "" and reverted.previous == stats.current
    np.testing.assert_array_equal(_scores(adapting, probe_math), math_before)
    cli = subprocess.run([sys.executable, "-m", "clients.cli", "--address", adapting.address, "adapter", "revert", "previous"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and f"adapter {stats.current} routes" in cli.stdout, cli.stdout + cli.stderr
    np.testing.assert_allclose(_scores(adapting, probe_math), math_after)
    summary = adapting.client.stats().summary
    assert f"adapter {stats.current} routes" in summary and "fits adopted" in summary
