"""Which questions gain from a stronger model: the routing score's target.

`shared/data/outcomes/llmrouter_dcrouter_train.jsonl` records, per question,
which of nine open models (7B to 70B) answered it right. For a weak/strong
pair, a question *gains* when the strong model is right and the weak one is
not. A question's difficulty is not its gain: the hardest questions (GPQA,
logic grids) gain nothing, since every model fails them, and neither do the
easiest.

The score is trained to rank questions by their gain averaged over many
pairs, so that it transfers to a deployment's own pair rather than to one
pair of this file. `gain_of` averages, for every pair whose accuracies
differ by MIN_GAP or more, "strong right and weak wrong", each pair weighted
by 1 / its accuracy gap: that weighting is what makes ranking by the average
the best one ranking for the mean of the pairs' APGR (APGR divides each
pair's recovered quality by its gap). `rank_target` turns it into a
training target in (0, 1) by its rank, so the logistic regression sees the
outcome rows on the same scale as the kinds' 0/1 labels.

Rows are read from the shared folder at training time, never copied here
(GPQA asks that its questions are never published in plain text).
Outcomes keep their 80/20 train/test split by a hash of the text, and
`leave_one_benchmark_out` trains without each benchmark in turn and scores
it: the honest measure of a ranking on a kind of question the fit never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import shared_file
from .evaluate import apgr, length_score
from .sources import split_of

MIN_GAP = 0.10  # pairs whose accuracies differ by less say little about who gains
SOURCE = "llmrouter"  # the training rows' source name


def default_outcomes() -> Path:
    return shared_file("shared/data/outcomes/llmrouter_dcrouter_train.jsonl", "TRIAGE_OUTCOMES")


@dataclass(frozen=True)
class OutcomeTable:
    texts: list[str]
    benchmarks: np.ndarray  # per question
    models: list[str]
    correct: np.ndarray  # questions x models, 1.0 right, 0.0 wrong
    splits: np.ndarray  # "train" or "test", by a hash of the text

    def split(self, name: str) -> "OutcomeTable":
        """The "train" or the "test" rows."""
        return self.subset(self.splits == name)

    def subset(self, mask: np.ndarray) -> "OutcomeTable":
        idx = np.flatnonzero(mask)
        return OutcomeTable([self.texts[i] for i in idx], self.benchmarks[idx], self.models, self.correct[idx], self.splits[idx])

    def __len__(self) -> int:
        return len(self.texts)


def load_table(path: str | Path | None = None) -> OutcomeTable | None:
    """The outcome file as a table, or None when it is not there."""
    path = Path(path) if path is not None else default_outcomes()
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:  # by "\n" only: questions hold U+2028
        rows = [json.loads(line) for line in f if line.strip()]
    models = sorted(rows[0]["scores"])
    return OutcomeTable(
        texts=[r["question"] for r in rows],
        benchmarks=np.array([r["benchmark"] for r in rows]),
        models=models,
        correct=np.array([[float(r["scores"][m]) for m in models] for r in rows]),
        splits=np.array([split_of(r["question"]) for r in rows]),
    )


def pairs(correct: np.ndarray, min_gap: float = MIN_GAP) -> list[tuple[int, int, float]]:
    """(weak, strong, gap) for every pair of models whose accuracies on these
    questions differ by min_gap or more."""
    acc = correct.mean(axis=0)
    return [(w, s, float(acc[s] - acc[w])) for w in range(len(acc)) for s in range(len(acc)) if acc[s] - acc[w] >= min_gap]


def gain_of(correct: np.ndarray) -> np.ndarray:
    """Per question, the pairs' 1/gap-weighted mean of "strong right, weak wrong"."""
    found = pairs(correct)
    weights = np.array([1.0 / gap for _, _, gap in found])
    weights /= weights.sum()
    return sum(wt * correct[:, s] * (1.0 - correct[:, w]) for wt, (w, s, _) in zip(weights, found))


def rank_target(gain: np.ndarray) -> np.ndarray:
    """The gain's rank as a target in (0, 1); ties share their mean rank."""
    from scipy.stats import rankdata

    return (rankdata(gain) - 0.5) / len(gain)


def shrunk_gain(table: OutcomeTable, keep: float) -> np.ndarray:
    """Each question's gain moved toward its benchmark's mean gain, keeping
    `keep` of its own deviation. One question's outcomes over nine models
    are a noisy estimate of its gain; its benchmark's mean is not."""
    g = gain_of(table.correct)
    out = np.empty_like(g)
    for bench in set(table.benchmarks):
        m = table.benchmarks == bench
        out[m] = g[m].mean() + keep * (g[m] - g[m].mean())
    return out


def training_rows(table: OutcomeTable, keep: float) -> list[dict]:
    """The table's train split as classifier rows with their rank targets
    (computed on those rows alone, so nothing of the test split leaks)."""
    train = table.split("train")
    target = rank_target(shrunk_gain(train, keep))
    return [{"text": t, "label": "outcome", "source": SOURCE, "benchmark": b, "split": "train", "target": float(q)}
            for t, b, q in zip(train.texts, train.benchmarks, target)]


def mean_pair_apgr(scores: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """APGR averaged over every pair whose accuracies on these questions
    differ by MIN_GAP or more, and how many pairs that is."""
    found = pairs(correct)
    values = [apgr(scores, correct[:, w], correct[:, s]) for w, s, _ in found]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def ranked(scores: np.ndarray, table: OutcomeTable) -> dict:
    """n, pairs, the scores' mean pair APGR and prompt length's."""
    value, k = mean_pair_apgr(scores, table.correct)
    return {"n": len(table), "pairs": k, "apgr": value, "apgr_length": mean_pair_apgr(length_score(table.texts), table.correct)[0]}


def ranking_report(scores: np.ndarray, table: OutcomeTable) -> dict:
    """`ranked` over all of the table and per benchmark."""
    per = {}
    for bench in sorted(set(table.benchmarks)):
        m = table.benchmarks == bench
        entry = ranked(scores[m], table.subset(m))
        if entry["pairs"]:
            per[str(bench)] = entry
    return {**ranked(scores, table), "per_benchmark": per}


def leave_one_benchmark_out(kind_rows: list[dict], table: OutcomeTable, fit, keep: float) -> dict:
    """For each benchmark: fit on the kinds' training rows and the outcome
    training rows of every other benchmark, score all of the benchmark's
    questions, and report the mean pair APGR there beside prompt length.
    `fit(rows) -> Classifier`."""
    per = {}
    for bench in sorted(set(table.benchmarks)):
        held = table.subset(table.benchmarks == bench)
        if not pairs(held.correct):
            continue
        clf = fit(kind_rows + training_rows(table.subset(table.benchmarks != bench), keep))
        per[str(bench)] = ranked(clf.score(held.texts), held)
    return {"per_benchmark": per,
            "mean_apgr": float(np.mean([v["apgr"] for v in per.values()])) if per else float("nan"),
            "mean_apgr_length": float(np.mean([v["apgr_length"] for v in per.values()])) if per else float("nan")}
