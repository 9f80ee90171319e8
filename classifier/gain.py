"""Other models' outcomes as a held-out ranking check, and as stand-in
deployments for the adapter.

`shared/data/outcomes/llmrouter_dcrouter_train.jsonl` records, per question,
which of nine open models (7B to 70B) answered it right. For a weak/strong
pair, a question *gains* when the strong model is right and the weak one is
not; APGR (evaluate.apgr) measures how well a score sends the gaining
questions up first, and the mean over every pair whose accuracies differ by
MIN_GAP or more is the table's ranking figure.

The prior is not trained on these rows: the last artifact that was (its
targets each question's gain averaged over pairs) ranked benchmarks it had
not seen at a mean pair APGR of 0.503 left out one at a time, and did worse
on five hidden outcome sets than the artifact before it. What does transfer
is a deployment's own pair's outcomes (adapter.py); `pair_stores` turns
this table into such deployments, one per (cheap, capable) pair.

Rows are read from the shared folder, never copied here (GPQA asks that its
questions are never published in plain text).
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
