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
from classifier.gain import OutcomeTable, default_outcomes, gain_of, mean_pair_apgr, rank_target
from classifier.outcomes import _parse
from classifier.sources import Source, load_sources, split_of

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


def test_outcome_logs_are_parsed_per_question():
    log = (
        "*****\n1st data\nQ: Tom has 3 apples and eats 1. How many are left?\nA: The answer is 2\n"
        "pred_before : 2\npred_after : 2\npred_list : ['2']\npred_mode : 2\nGT : 2\n*****\n"
        "*****\n2st data\nQ: Which is heavier? Answer Choices: (A) a kilo (B) a pound\nA: (B)\n"
        "pred_mode : B\nGT : A\n*****\n"
    )
    assert _parse(log, "auto") == {"Tom has 3 apples and eats 1. How many are left?": True, "Which is heavier? Answer Choices: (A) a kilo (B) a pound": False}


def test_sources_are_read_at_their_pinned_commit(tmp_path, monkeypatch):
    repo = tmp_path / "someone+qa" / "repo"
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout.strip()
    repo.mkdir(parents=True)
    run("init", "-q")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (repo / "q.json").write_text(json.dumps(["Who wrote Hamlet?", "Who wrote Hamlet?", "What is 2+2?"]))
    run("add", "q.json")
    run("commit", "-qm", "one")
    pinned = run("rev-parse", "HEAD")
    (repo / "q.json").write_text(json.dumps(["changed later"]))
    run("commit", "-qam", "two")
    source = Source("qa", "someone/qa", pinned, "q.json", "MIT", "test", "all simple", json.loads, label="simple")
    monkeypatch.setattr("classifier.sources.SOURCES", (source,))
    rows, used = load_sources(tmp_path)
    assert [r["text"] for r in rows] == ["Who wrote Hamlet?", "What is 2+2?"]  # the pinned commit, de-duplicated
    assert all(r["label"] == "simple" and r["split"] == split_of(r["text"]) for r in rows)
    assert used["qa"]["rows"] == 2 and len(used["qa"]["sha256"]) == 64
    rows, used = load_sources(tmp_path / "nowhere")
    assert rows == [] and used["qa"]["rows"] == 0  # a missing snapshot is skipped, and said so


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


@pytest.mark.skipif(not Path(DEFAULT_DATA).is_file(), reason=f"labeled data not at {DEFAULT_DATA}")
def test_cli_evaluate_meets_the_kind_targets():
    # Since the score also ranks by gain (issue 24) the kinds cost a few
    # points: on the shared sources alone (all CI has) macro 0.908 -> 0.872,
    # NQ's one-hop search queries most (0.90 -> 0.76: written as sentence
    # completions, they look like OpenBookQA's, which gain in the outcome
    # data). With the pinned extra sources the macro is 0.891 (MODEL_CARD.md).
    out = run_cli("evaluate", "--json", "--no-extra")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["all_sources_macro_accuracy"] >= 0.86
    for source in ("nq_open", "mt_bench", "vicuna_bench", "dolly", "gsm8k", "trec"):
        assert report["per_source"][source]["accuracy"] >= 0.75, source
    for source in ("mt_bench", "vicuna_bench", "dolly", "gsm8k"):
        m = report["per_source"][source]
        assert m["accuracy"] > m["length_baseline"], source


@pytest.mark.skipif(not Path(DEFAULT_DATA).is_file(), reason=f"labeled data not at {DEFAULT_DATA}")
def test_gsm8k_test_problems_are_ordered_by_steps_better_than_by_length():
    out = run_cli("evaluate", "--json", "--no-extra")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)["steps_ranking"]
    assert s["spearman_steps"] > s["spearman_steps_length"] + 0.05
    assert s["apgr_steps_above_median"] > s["apgr_steps_above_median_length"]


def table_of(correct: list[list[float]]) -> OutcomeTable:
    n = len(correct)
    return OutcomeTable([f"q{i}" for i in range(n)], np.array(["b"] * n), ["m0", "m1", "m2"], np.array(correct, dtype=float),
                        np.array(["train"] * n))


def test_gain_is_strong_right_where_weak_is_wrong_not_difficulty():
    # Three models of rising accuracy; the rows: everyone fails (hardest),
    # everyone passes (easiest), only the strongest passes, the two
    # stronger pass. The hardest question gains nothing, as the easiest.
    correct = [[0, 0, 0], [1, 1, 1], [0, 0, 1], [0, 1, 1]] * 5 + [[0, 1, 1], [0, 0, 1]]
    g = gain_of(np.array(correct, dtype=float))
    assert g[0] == 0.0 and g[1] == 0.0
    assert g[2] > 0 and g[3] > 0
    target = rank_target(g)
    assert np.all((target > 0) & (target < 1))
    assert target[0] == target[1] < target[2]
    # Ranking by gain recovers more than ranking by difficulty (errors), which
    # puts the questions nobody answers first.
    difficulty = 3 - np.array(correct).sum(axis=1)
    by_gain, _ = mean_pair_apgr(g, np.array(correct, dtype=float))
    by_difficulty, pairs = mean_pair_apgr(difficulty.astype(float), np.array(correct, dtype=float))
    assert pairs == 3 and by_gain > by_difficulty


@pytest.mark.skipif(not default_outcomes().is_file(), reason=f"outcome table not at {default_outcomes()}")
def test_gain_ranking_beats_prompt_length_on_held_out_outcomes():
    out = run_cli("evaluate", "--json", "--no-extra")
    assert out.returncode == 0, out.stderr
    g = json.loads(out.stdout)["gain_ranking"]
    assert g["pairs"] >= 20
    assert g["apgr"] >= 0.58 and g["apgr"] > g["apgr_length"] + 0.1, g


def test_another_revision_scores_with_its_own_code_and_artifact(clf):
    # What `evaluate --against REV` and `bench --against REV` stand on: the
    # committed revision's classifier, run from `git archive`, agrees with
    # the one loaded here when nothing has changed since.
    from classifier.__main__ import scores_at

    if subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "classifier"]).returncode != 0:
        pytest.skip("classifier/ has uncommitted changes")
    np.testing.assert_allclose(scores_at("HEAD", SAMPLES), clf.score(SAMPLES), atol=1e-6)


def test_cli_train_refuses_an_unknown_hyperparameter_before_any_work(tmp_path):
    out = run_cli("train", "--out", str(tmp_path / "art"), "--set", "outcome_kep=1.0")
    assert out.returncode != 0
    assert "no hyperparameter 'outcome_kep'" in out.stderr and "outcome_keep" in out.stderr
    assert not (tmp_path / "art").exists()
