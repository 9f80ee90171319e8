"""`python -m classifier calibrate --feedback`: the cut re-fitted from a
router's feedback store, checked on the newest outcomes, refused when the
result does worse than what is in use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from classifier.data import DEFAULT_DATA
from classifier.feedback import calibrate, fit_cut, read_outcomes
from server.routing.feedback import Answered, FeedbackTable

from classifier.model import ARTIFACT_DIR as ARTIFACTS

from .test_classifier import ROOT

# As in test_classifier: the labeled questions live outside the repository (../shared/data).
NEEDS_LABELED = pytest.mark.skipif(not DEFAULT_DATA.is_file(), reason=f"labeled data not at {DEFAULT_DATA}")


def fill(path, n: int, fails_above: float, seed: int = 0, cut: float = 0.45, questions=None) -> None:
    """A store as a router would leave it: answers below `cut` from the
    small tier, above it from the large one; the small tier's answers fail
    (mostly) when their score is above `fails_above`, the large tier's are
    right."""
    rng = np.random.default_rng(seed)
    store = FeedbackTable.open(str(path), max_rows=10**6)
    for i in range(n):
        p = float(rng.uniform(0, 1))
        tier = "small" if p < cut else "large"
        good = bool(rng.random() < (0.9 if tier == "large" or p < fails_above else 0.2))
        question = questions[i % len(questions)] if questions else None
        store.record(f"r{i}", Answered(tier, tier.upper(), p, cut, "classifier", time.time(), question), None, good, "")
    store.close()


def test_a_cheap_tier_failing_above_a_score_lowers_the_cut_there(tmp_path):
    fill(tmp_path / "f.sqlite", 2000, fails_above=0.3)
    report = calibrate(read_outcomes(tmp_path / "f.sqlite"), "small", current_cut=0.45, max_failure=0.2)
    assert report["accepted"], report
    assert report["new_cut"] == pytest.approx(0.3, abs=0.03)
    held = report["held_out"]
    assert held["new"]["cheap_failure_rate"] < held["current"]["cheap_failure_rate"]
    assert held["new"]["share_above_cut"] > held["current"]["share_above_cut"]  # the price: more large-tier answers


def test_the_cut_rises_no_further_than_the_cheap_tiers_answers_reach(tmp_path):
    fill(tmp_path / "f.sqlite", 2000, fails_above=0.9)  # the small tier does fine wherever it answered
    outcomes = read_outcomes(tmp_path / "f.sqlite")
    cheap = [o for o in outcomes if o.tier == "small"]
    cut, _ = fit_cut(cheap, max_failure=0.2)
    # No evidence above 0.45 (the large tier's answers say nothing about the
    # small one): the cut stays near it, never above the highest small answer.
    assert 0.40 <= cut <= max(o.p_complex for o in cheap) + 1e-9
    cut, why = fit_cut(cheap, max_failure=0.5)
    assert cut == pytest.approx(max(o.p_complex for o in cheap)) and "highest scored answer" in why


def test_too_few_outcomes_or_a_worse_cut_is_refused(tmp_path):
    fill(tmp_path / "few.sqlite", 150, fails_above=0.3)
    with pytest.raises(ValueError, match="outcomes of the cheap tier"):
        calibrate(read_outcomes(tmp_path / "few.sqlite"), "small", current_cut=0.45, max_failure=0.2)
    # The older outcomes say the small tier is fine; the newest say it fails
    # everywhere: the fitted cut does worse on them than the current one.
    store = tmp_path / "drift.sqlite"
    fill(store, 1500, fails_above=0.95, seed=1)
    s = FeedbackTable.open(str(store), 10**6)
    rng = np.random.default_rng(2)
    for i in range(500):
        p = float(rng.uniform(0, 0.45))
        s.record(f"late{i}", Answered("small", "SMALL", p, 0.45, "classifier", time.time(), None), None, p < 0.2, "")
    s.close()
    report = calibrate(read_outcomes(store), "small", current_cut=0.3, max_failure=0.2)
    assert not report["accepted"] and "held-out" in report["refused_because"]


def test_cli_calibrate_feedback_writes_the_threshold_to_a_copy_or_refuses(tmp_path):
    art = tmp_path / "art"
    shutil.copytree(ARTIFACTS, art)
    fill(tmp_path / "f.sqlite", 2000, fails_above=0.3)
    run = subprocess.run([sys.executable, "-m", "classifier", "--model", str(art), "calibrate", "--feedback", str(tmp_path / "f.sqlite")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    meta = json.loads((art / "metadata.json").read_text())
    assert meta["threshold"] == pytest.approx(0.3, abs=0.03) and "f.sqlite" in meta["threshold_source"]
    assert json.loads((ARTIFACTS / "metadata.json").read_text())["threshold"] != meta["threshold"]  # the committed one untouched
    run = subprocess.run([sys.executable, "-m", "classifier", "--model", str(art), "calibrate", "--feedback", str(tmp_path / "missing.sqlite")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "no such store" in run.stderr and "Traceback" not in run.stderr
