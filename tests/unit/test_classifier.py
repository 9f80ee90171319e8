"""The classifier's contract: shape, range, determinism, bad input, the fast
path agreeing with the pipeline, the CLI, calibration, and safe loading."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import classifier
from classifier.calibrate import threshold_for_share
from classifier.data import DEFAULT_DATA
from classifier.model import ARTIFACT_DIR, MODEL_FILE, TRUSTED_TYPES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clf():
    return classifier.load()


SAMPLES = [
    "What is the capital of France?",
    "who sang love is all around",
    "How can I improve my time management skills?",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Janet has 3 apples and buys 5 more at $2 each. She gives half to Tom. How much did she spend and how many are left?",
    "hi there",
    "Implement a function in Python that returns the kth smallest element of two sorted lists.",
    "What if the Roman Empire had never fallen?",
]


def test_scores_have_shape_range_and_are_deterministic(clf):
    p = clf.score(SAMPLES)
    assert p.shape == (len(SAMPLES),)
    assert np.all((p >= 0) & (p <= 1))
    assert np.array_equal(p, clf.score(SAMPLES))
    assert clf.score([]).shape == (0,)
    assert 0.0 < clf.threshold < 1.0


def test_obvious_cases_land_on_the_right_side(clf):
    p = dict(zip(SAMPLES, clf.score(SAMPLES)))
    t = clf.threshold
    assert p["What is the capital of France?"] < t
    assert p["who sang love is all around"] < t
    assert p["hi there"] < t
    assert p["How can I improve my time management skills?"] >= t
    assert p["Write a short story about a lighthouse keeper who finds a message in a bottle."] >= t
    assert p[SAMPLES[4]] >= t
    assert p[SAMPLES[6]] >= t


def test_fast_path_matches_the_pipeline(clf):
    batch = SAMPLES * 2  # > fast-path size: goes through the sklearn pipeline
    slow = clf.score(batch)[: len(SAMPLES)]
    fast = np.array([clf.score([t])[0] for t in SAMPLES])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


BAD_INPUTS = [
    "",
    "   \n\t  ",
    "x" * 1_000_000,
    "Quelle est la capitale de la France ? 東京は日本の首都ですか",
    "🚀🔥💯 " * 50,
    "```python\ndef f(x):\n    return x ** 2\n```",
    "\x00\x01\x02 control \x1b[31m characters \x7f",
    "\ud800 lone surrogate",
]


def test_bad_input_gives_valid_probabilities_in_bounded_time(clf):
    for text in BAD_INPUTS:
        started = time.perf_counter()
        p = clf.score([text])
        elapsed = time.perf_counter() - started
        assert p.shape == (1,) and 0.0 <= p[0] <= 1.0, repr(text[:40])
        # Generous: the point is "truncated before featurising", not speed.
        assert elapsed < 0.5, f"{elapsed:.3f}s for {text[:20]!r}"
    p = clf.score(BAD_INPUTS + [None, 42])  # also through the batch path
    assert p.shape == (len(BAD_INPUTS) + 2,) and np.all((p >= 0) & (p <= 1))


def test_artifact_loads_with_skops_trusted_type_check():
    import skops.io as sio

    path = ARTIFACT_DIR / MODEL_FILE
    untrusted = sio.get_untrusted_types(file=path)
    assert set(untrusted) <= set(TRUSTED_TYPES)
    pipeline = sio.load(path, trusted=untrusted)
    assert hasattr(pipeline, "predict_proba")
    with pytest.raises(Exception):
        sio.load(path, trusted=[])  # refuses our functions unless named


def test_metadata_records_provenance():
    meta = json.loads((ARTIFACT_DIR / "metadata.json").read_text())
    assert len(meta["data_sha256"]) == 64
    assert {"scikit-learn", "skops", "numpy"} <= set(meta["versions"])
    assert 0.0 < meta["threshold"] < 1.0
    assert (ARTIFACT_DIR / "MODEL_CARD.md").is_file()


def run_cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "classifier", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_score_round_trip():
    lines = [json.dumps({"text": "What is the capital of France?"}), json.dumps({"prompt": "Write an essay on the causes of World War I."}), ""]
    out = run_cli("score", stdin="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["simple", "complex"]
    assert all(0.0 <= r["p_complex"] <= 1.0 for r in rows)


def test_cli_score_reports_a_malformed_line_and_keeps_earlier_ones():
    stdin = json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": "who wrote hamlet"}) + "\n{not json\n" + json.dumps({"text": "x"}) + "\n"
    out = run_cli("score", stdin=stdin)
    assert out.returncode != 0
    assert "stdin:3" in out.stderr and "malformed" in out.stderr
    assert len(out.stdout.splitlines()) == 2


def test_calibration_hits_the_target_share(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.random(2000)
    for target in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
        t = threshold_for_share(scores, target)
        assert abs(float((scores >= t).mean()) - target) <= 0.01


def test_cli_calibrate_writes_threshold_to_a_copy(tmp_path):
    import shutil

    art = tmp_path / "artifacts"
    shutil.copytree(ARTIFACT_DIR, art)
    sample = tmp_path / "sample.jsonl"
    # Distinct prompts, as real traffic is: identical copies tie, and no
    # threshold can split a tie.
    topics = ["rivers", "chess", "tax law", "volcanoes", "jazz", "compilers", "roman history", "gardening", "sleep", "sailing"]
    texts = [f"who invented {t} number {i}" for t in topics for i in range(12)]
    texts += [f"Explain how {t} changed between {1900 + i} and today" for t in topics for i in range(8)]
    texts += [f"Write a {n}-paragraph essay about {t}" for t in topics for n in ("two", "three", "five", "six")]
    sample.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    out = run_cli("--model", str(art), "calibrate", "--target-large-share", "0.3", "--sample", str(sample))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert abs(result["realised_large_share"] - 0.3) <= 0.01
    meta = json.loads((art / "metadata.json").read_text())
    assert meta["threshold"] == pytest.approx(result["threshold"])
    clf = classifier.load(art)
    assert abs(float((clf.score(texts) >= clf.threshold).mean()) - 0.3) <= 0.01


@pytest.mark.skipif(not Path(DEFAULT_DATA).is_file(), reason=f"labeled data not at {DEFAULT_DATA}")
def test_cli_evaluate_meets_the_dev_cross_targets():
    out = run_cli("evaluate", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dev_cross_macro_accuracy"] >= 0.92
    for source in ("nq_open", "mt_bench", "vicuna_bench"):
        assert report["per_source"][source]["accuracy"] >= 0.88, source
    for source in ("mt_bench", "vicuna_bench", "dolly", "gsm8k"):
        m = report["per_source"][source]
        assert m["accuracy"] > m["length_baseline"], source
