"""`python -m classifier adapt`: an adapter fitted from a router's feedback
store, written beside the prior only when it ranks the newest outcomes
better than the prior does; loaded and scored like any artifact."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest

import classifier
from classifier.adapter import Outcomes, fit_and_gate, read_store
from classifier.model import ADAPTER_FILE, AdaptedClassifier
from server.routing.feedback import Answered, FeedbackTable

from .test_classifier import ROOT

COUNTRIES = "France Spain Italy Peru Chile Kenya Egypt Japan China India Brazil Canada Mexico Norway Sweden Poland Greece Turkey".split()
ANIMALS = "otters owls bees sharks wolves koalas pandas crows ants frogs bats eels".split()


def leaders(rng) -> str:
    """The kind this deployment's cheap tier gets wrong (it makes up names),
    and that the prior scores as the one-hop lookups they look like."""
    return f"Who {rng.choice(['is', 'was'])} the {rng.choice(['president', 'prime minister', 'finance minister'])} of {rng.choice(COUNTRIES)}?"


def other_kind(rng) -> str:
    return rng.choice([f"What is the capital of {rng.choice(COUNTRIES)}?", f"Tell me a fun fact about {rng.choice(ANIMALS)}.",
                       f"How many grams are in {rng.randint(2, 90)} pounds?", f"hi, what do {rng.choice(ANIMALS)} eat?"])


def fill(path, n: int, failing: bool = True, seed: int = 0, tier: str = "small", noise: float = 0.05) -> None:
    """Shadow outcomes as a router with feedback.keep_text stores them:
    questions about leaders fail (when `failing`), everything else agrees;
    `noise` of the outcomes flipped."""
    rng = random.Random(seed)
    store = FeedbackTable.open(str(path), max_rows=10**6)
    for i in range(n):
        leader = rng.random() < 0.3
        question = leaders(rng) if leader else other_kind(rng)
        good = not (failing and leader)
        if rng.random() < noise:
            good = not good
        store.record(f"r{i}:shadow", Answered(tier, "S", 0.3, 0.45, "classifier", time.time(), question), None, good, "shadow-up")
    store.close()


def adapt(*args, model=None):
    cmd = [sys.executable, "-m", "classifier", *(["--model", str(model)] if model else []), "adapt", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def prior():
    return classifier.load()


def test_adapt_writes_prior_and_adapter_that_raise_the_failing_kind_only(tmp_path, prior):
    fill(tmp_path / "f.sqlite", 600)
    run = adapt("--feedback", tmp_path / "f.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["adopted"] and report["outcomes"] == 600 and report["held_out"] == 150
    figures = report["held_out_apgr"]
    # 0.795 is the most any score can reach here (the noise cannot be ranked).
    assert figures["adapter"] > figures["prior"] + 0.1 and figures["adapter"] > 0.75, figures
    adapted = classifier.load(tmp_path / "art")
    assert isinstance(adapted, AdaptedClassifier) and (tmp_path / "art" / ADAPTER_FILE).is_file()
    rng = random.Random(99)  # questions of the same kinds, not in the store
    leader_questions, others = [leaders(rng) for _ in range(40)], [other_kind(rng) for _ in range(40)]
    assert np.mean(adapted.score(leader_questions)) > np.mean(prior.score(leader_questions)) + 0.2
    assert np.mean(adapted.score(others)) <= np.mean(prior.score(others)) + 0.02
    assert adapted.score(leader_questions).min() > adapted.score(others).max()
    # Scored through the CLI like any artifact, the same numbers.
    lines = "".join(json.dumps({"text": t}) + "\n" for t in leader_questions[:5])
    out = subprocess.run([sys.executable, "-m", "classifier", "--model", str(tmp_path / "art"), "score"], cwd=ROOT, input=lines,
                         capture_output=True, text=True, timeout=120, check=True)
    np.testing.assert_allclose([json.loads(x)["p_complex"] for x in out.stdout.splitlines()], adapted.score(leader_questions[:5]), atol=1e-6)


def test_the_adapted_score_is_the_probability_that_the_cheap_tier_fails(tmp_path, prior):
    # p_complex keeps its meaning (the large tier is needed) for this pair:
    # leaders fail 95 % of the time here, the rest 5 %.
    fill(tmp_path / "f.sqlite", 600)
    adapter, report = fit_and_gate(prior, read_store(tmp_path / "f.sqlite"))
    adapted = AdaptedClassifier(prior, adapter)
    rng = random.Random(7)
    assert np.mean(adapted.score([leaders(rng) for _ in range(50)])) == pytest.approx(0.95, abs=0.07)
    assert np.mean(adapted.score([other_kind(rng) for _ in range(50)])) == pytest.approx(0.05, abs=0.05)


def test_outcomes_that_carry_no_signal_are_refused_and_nothing_is_written(tmp_path):
    fill(tmp_path / "f.sqlite", 800, failing=False, noise=0.3)  # failures at random: nothing to learn
    run = adapt("--feedback", tmp_path / "f.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 1 and "refused: on the newest 200 outcomes" in run.stderr and "Traceback" not in run.stderr
    report = json.loads(run.stdout)
    assert not report["adopted"] and report["held_out_wins"] < 0.8 and set(report["held_out_apgr"]) == {"adapter", "prior", "length"}
    assert not (tmp_path / "art").exists()


def test_outcomes_whose_pattern_changed_are_refused(tmp_path):
    # The older outcomes say leaders fail; the newest quarter, the reverse
    # (say the cheap model was replaced): what was fitted does not hold.
    fill(tmp_path / "f.sqlite", 450)
    store = FeedbackTable.open(str(tmp_path / "f.sqlite"), max_rows=10**6)
    rng = random.Random(5)
    for i in range(150):
        leader = rng.random() < 0.3
        question = leaders(rng) if leader else other_kind(rng)
        store.record(f"n{i}", Answered("small", "S", 0.3, 0.45, "classifier", time.time(), question), None, leader, "shadow-up")
    store.close()
    run = adapt("--feedback", tmp_path / "f.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 1, run.stdout
    figures = json.loads(run.stdout)["held_out_apgr"]
    assert figures["adapter"] < figures["prior"] and not (tmp_path / "art").exists()


def test_too_few_outcomes_or_another_tier_or_no_store_are_refused_clearly(tmp_path):
    fill(tmp_path / "few.sqlite", 120)
    run = adapt("--feedback", tmp_path / "few.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 1 and "120 outcomes of the cheap tier" in run.stderr
    fill(tmp_path / "large.sqlite", 600, tier="large")  # the capable tier's outcomes say nothing of the cheap one's
    run = adapt("--feedback", tmp_path / "large.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 1 and "0 outcomes of the cheap tier" in run.stderr
    run = adapt("--feedback", tmp_path / "missing.sqlite", "--out", tmp_path / "art")
    assert run.returncode == 2 and "no such store" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "art").exists()


def test_an_adapted_artifact_is_refitted_from_its_prior(tmp_path, prior):
    fill(tmp_path / "f.sqlite", 600)
    assert adapt("--feedback", tmp_path / "f.sqlite", "--out", tmp_path / "one").returncode == 0
    fill(tmp_path / "g.sqlite", 600, seed=1)
    run = adapt("--feedback", tmp_path / "g.sqlite", "--out", tmp_path / "two", model=tmp_path / "one")
    assert run.returncode == 0, run.stderr
    # The prior scores of "two" are the committed prior's, not "one"'s adapted ones.
    texts = ["What is the capital of Peru?", "How many grams are in 3 pounds?"]
    np.testing.assert_allclose(classifier.load(tmp_path / "two").prior.score(texts), prior.score(texts))


def test_odd_text_scores_in_range(prior):
    rng = random.Random(3)
    outcomes = Outcomes([leaders(rng) if i % 3 == 0 else other_kind(rng) for i in range(300)],
                        np.array([1.0 if i % 3 == 0 else 0.0 for i in range(300)]), np.arange(300.0))
    adapter, report = fit_and_gate(prior, outcomes)
    assert adapter is not None, report
    p = AdaptedClassifier(prior, adapter).score(["", None, 42, "x" * 100_000, "\x00\ud800"])
    assert np.all((p >= 0) & (p <= 1))
