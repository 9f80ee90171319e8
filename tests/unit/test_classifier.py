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
from classifier.data import DEFAULT_DATA, steps_target
from classifier.evaluate import apgr
from classifier.model import ARTIFACT_DIR, MODEL_FILE, TRUSTED_TYPES
from classifier.gain import mean_pair_apgr
from classifier.sources import SOURCES, Source, SourceError, load_sources, split_of

ROOT = Path(__file__).resolve().parents[2]
# The labeled questions and the pinned sources live beside the checkout
# (../shared/data), never in it; a clone elsewhere skips what needs them.
NEEDS_SHARED = pytest.mark.skipif(not DEFAULT_DATA.is_file(), reason=f"labeled data not at {DEFAULT_DATA}")


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


# Written for these tests (not from any data set): a question that needs
# several facts found and combined, next to a one-hop lookup on the same
# subject. The artifact before the graded score put every multi-part one
# below its threshold (0.06-0.30 against 0.5).
MULTI_PART_VS_ONE_HOP = [
    ("What is the total population of the five largest cities in Germany?", "What is the population of Berlin?"),
    ("Which is longer, the Nile or the Amazon?", "How long is the Nile?"),
    ("Who directed the film that won Best Picture in the year the Berlin Wall fell?", "Who directed Titanic?"),
    ("How many goals did Messi and Ronaldo score in 2012 combined?", "Who won the 2010 World Cup?"),
]


def test_multi_part_questions_go_large_and_outscore_one_hop_lookups(clf):
    for multi, single in MULTI_PART_VS_ONE_HOP:
        p_multi, p_single = clf.score([multi, single])
        assert p_multi >= clf.threshold, multi
        assert p_single < clf.threshold, single
        assert p_multi > p_single, (multi, single)


# The same purchase with more and more steps to work out. The artifact
# before the graded score gave 0.62, 0.992, 0.997, 0.997: no order among
# word problems once they had two numbers.
MORE_STEPS = [
    "A book costs $12. How much do 3 books cost?",
    "A book costs $12 and a pen costs $3. Sam buys 3 books and 4 pens. How much does he spend?",
    "A book costs $12 and a pen costs $3. Sam buys 3 books and 4 pens, pays with a $100 bill and then gives half"
    " of his change to his sister. How much money does Sam have left?",
    "A book costs $12 and a pen costs $3. Sam buys 3 books and 4 pens with a 10% discount on the books, pays with a"
    " $100 bill, gives half of his change to his sister and spends a third of the rest on lunch. How much money does"
    " Sam have left?",
]


def test_word_problems_with_more_steps_score_higher_without_saturating(clf):
    p = clf.score(MORE_STEPS)
    assert np.all(np.diff(p) > 0), p
    assert p[-1] < 0.99 and p[-1] - p[1] > 0.1, p


def test_steps_target_grows_in_log_odds_and_never_reaches_one():
    t = np.array([steps_target(s) for s in range(12)])
    assert np.all(np.diff(t) > 0) and t[-1] < 1.0
    logit = np.log(t / (1 - t))
    np.testing.assert_allclose(np.diff(logit), np.diff(logit)[0])


def test_apgr_is_half_for_a_constant_score_and_orders_routers():
    rng = np.random.default_rng(0)
    weak = (rng.random(400) < 0.5).astype(float)
    strong = np.maximum(weak, (rng.random(400) < 0.8).astype(float))
    gain = strong - weak
    assert apgr(np.zeros(400), weak, strong) == pytest.approx(0.5)
    best = apgr(gain, weak, strong)  # the questions that gain first
    worst = apgr(-gain, weak, strong)
    assert best > 0.5 > worst and best + worst == pytest.approx(1.0)
    # By hand: two questions, only the second gains; routing it first
    # recovers the whole gap after half the calls: area 0.75.
    assert apgr(np.array([0.1, 0.9]), np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(0.75)
    assert np.isnan(apgr(np.zeros(3), np.ones(3), np.ones(3)))  # no gap to recover


def test_sources_are_read_from_the_shared_folder_and_checked_against_their_sha256(tmp_path, monkeypatch):
    import hashlib

    raw = json.dumps(["Who wrote Hamlet?", "Who wrote Hamlet?", "What is 2+2?"]).encode()
    (tmp_path / "q.json").write_bytes(raw)
    source = Source("qa", "someone/qa", "0" * 40, "data/q.json", "q.json", hashlib.sha256(raw).hexdigest(), "MIT", "test", "all simple",
                    json.loads, label="simple")
    monkeypatch.setattr("classifier.sources.SOURCES", (source,))
    rows, used = load_sources(tmp_path)
    assert [r["text"] for r in rows] == ["Who wrote Hamlet?", "What is 2+2?"]  # de-duplicated
    assert all(r["label"] == "simple" and r["split"] == split_of(r["text"]) for r in rows)
    assert used["qa"]["rows"] == 2 and used["qa"]["sha256"] == source.sha256
    (tmp_path / "q.json").write_bytes(raw.replace(b"2+2", b"2+3"))
    with pytest.raises(SourceError, match="not the pinned"):
        load_sources(tmp_path)  # other bytes than the pinned ones are refused, not trained on
    with pytest.raises(SourceError, match="TRIAGE_SOURCES"):
        load_sources(tmp_path / "nowhere")  # a missing file says where to point


@NEEDS_SHARED
def test_the_pinned_sources_are_beside_the_checkout_with_their_bytes():
    # What a fresh clone with ../shared beside it trains on; no snapshot of
    # any repository is needed.
    rows, used = load_sources()
    assert set(used) == {"strategyqa", "hotpotqa", "wikitablequestions", "mbpp"}
    assert all(u["rows"] > 300 for u in used.values()), {k: u["rows"] for k, u in used.items()}


def test_fast_path_matches_the_pipeline(clf):
    texts = SAMPLES + MORE_STEPS + BAD_INPUTS[:-1]  # the sklearn pipeline cannot encode a lone surrogate
    slow = clf.pipeline.predict_proba(texts)[:, 1]
    np.testing.assert_allclose(clf.score(texts), slow, rtol=0, atol=1e-9)
    np.testing.assert_allclose([clf.score([t])[0] for t in texts], slow, rtol=0, atol=1e-9)


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


@pytest.fixture(scope="module")
def evaluation():
    if not DEFAULT_DATA.is_file():
        pytest.skip(f"labeled data not at {DEFAULT_DATA}")
    out = run_cli("evaluate", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_evaluate_meets_the_kind_targets(evaluation):
    # Every kind of input a user sends, held out: the sources never trained
    # on and the shapes built from held-out rows (classifier/shapes.py),
    # code given as a stub to complete among them (it once scored simple).
    per = evaluation["per_source"]
    for source in ("nq_open", "mt_bench", "vicuna_bench", "gsm8k", "trec", "mbpp", "hotpotqa", "strategyqa", "wikitablequestions",
                   "code_stub", "code_request", "multi_part", "chat"):
        assert per[source]["accuracy"] >= 0.85, (source, per[source])
    assert per["dolly"]["accuracy"] >= 0.70  # its category labels are noisy (SOURCES.md)
    for source in ("mt_bench", "vicuna_bench", "dolly", "code_stub", "code_request", "multi_part"):
        assert per[source]["accuracy"] > per[source]["length_baseline"], source
    assert evaluation["all_sources_macro_accuracy"] >= 0.85


def test_a_function_stub_to_complete_scores_as_code_does(clf):
    stub = 'def merge_intervals(intervals):\n    """Merge all overlapping intervals and return the result sorted by start."""\n'
    request = "Write a function that merges all overlapping intervals and returns them sorted by start."
    assert min(clf.score([stub, request])) >= 0.8


def test_gsm8k_test_problems_are_ordered_by_steps_better_than_by_length(evaluation):
    s = evaluation["steps_ranking"]
    assert s["spearman_steps"] > s["spearman_steps_length"] + 0.05
    assert s["apgr_steps_above_median"] > s["apgr_steps_above_median_length"]


def test_mean_pair_apgr_averages_over_pairs_with_a_gap():
    # Three models of rising accuracy; ranking by who gains (the strongest
    # alone right) recovers more than ranking by errors, which puts the
    # questions nobody answers first.
    correct = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 1], [0, 1, 1]] * 5 + [[0, 1, 1], [0, 0, 1]], dtype=float)
    gains = correct[:, 2] * (1 - correct[:, 0])
    by_gain, pairs = mean_pair_apgr(gains, correct)
    by_difficulty, _ = mean_pair_apgr(3 - correct.sum(axis=1), correct)
    assert pairs == 3 and by_gain > by_difficulty


def test_another_revision_scores_with_its_own_code_and_artifact(clf):
    # What `evaluate --against REV` and `bench --against REV` stand on: the
    # committed revision's classifier, run from `git archive`, agrees with
    # the one loaded here when nothing has changed since.
    from classifier.__main__ import scores_at

    if subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "classifier"]).returncode != 0:
        pytest.skip("classifier/ has uncommitted changes")
    np.testing.assert_allclose(scores_at("HEAD", SAMPLES), clf.score(SAMPLES), atol=1e-6)


def test_cli_train_refuses_an_unknown_hyperparameter_before_any_work(tmp_path):
    out = run_cli("train", "--out", str(tmp_path / "art"), "--set", "word_weigth=1.0")
    assert out.returncode != 0
    assert "no hyperparameter 'word_weigth'" in out.stderr and "word_weight" in out.stderr
    assert not (tmp_path / "art").exists()


@NEEDS_SHARED
def test_training_on_a_fresh_clone_reproduces_the_committed_prior(tmp_path, clf):
    # Everything training reads is beside the checkout (../shared/data) and
    # pinned by sha256: the same command gives the same model.
    out = run_cli("train", "--no-cross-source", "--out", str(tmp_path / "art"))
    assert out.returncode == 0, out.stderr[-2000:]
    again = classifier.load(tmp_path / "art")
    texts = SAMPLES + ['def f(xs):\n    """Return the sorted unique values of xs."""\n', "1. Who wrote Hamlet? 2. When was it written?"]
    np.testing.assert_allclose(again.score(texts), clf.score(texts), atol=1e-6)
    meta = json.loads((tmp_path / "art" / "metadata.json").read_text())
    assert {s["sha256"] for s in meta["extra_sources"].values()} == {s.sha256 for s in SOURCES}
