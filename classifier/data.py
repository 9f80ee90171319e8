"""Reading the labeled questions: shared/data/questions (labeled.jsonl and
GSM8K's reference solutions) and the pinned public sources in sources.py.

The rows stay outside the repository (some sources are share-alike); only
their sha256 is recorded with the artifact.

Every row carries a training `target` in [0, 1], the probability that the
large tier is needed: 0 for simple, 1 for complex, and for a GSM8K problem a
value that grows with its number of calculation steps (see `steps_target`),
so the score orders word problems by how much work they are instead of
saturating at 1 for all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable

def shared_file(relative: str, env: str, folder: bool = False) -> Path:
    """$`env`, else `relative` under the nearest ancestor of the checkout
    that has it (shared/ sits beside the repository). `folder`: return the
    folder holding `relative` (the variable then names that folder)."""
    if env in os.environ:
        return Path(os.environ[env])
    repo = Path(__file__).resolve().parents[1]
    found = next((f / relative for f in repo.parents if (f / relative).is_file()), repo.parent / relative)
    return found.parent if folder else found


def labelled(row: dict) -> bool:
    """A row of a kind of question (simple or complex), not an ambiguous one
    or an outcome row (gain.py), which brings its own target."""
    return row["label"] in ("simple", "complex")


DEFAULT_DATA = shared_file("shared/data/questions/labeled.jsonl", "TRIAGE_QUESTIONS")
SOLUTIONS_FILE = "gsm8k_solutions.jsonl"
# Sources never trained on: they check that the model generalises beyond the
# style of its training sources.
DEV_CROSS = ("nq_open", "mt_bench", "vicuna_bench")

# A GSM8K problem with s calculation steps is complex with probability
# sigmoid(STEPS_OFFSET + STEPS_SLOPE * s): 0.38 for one step (a one-step
# problem is something a small model does), 0.73 for two, 0.92 for three,
# 0.98 for four. Linear in log-odds, which is what the score orders by, so
# every extra step moves it as much and nothing saturates.
STEPS_OFFSET = -2.0
STEPS_SLOPE = 1.5


def steps_target(steps: int) -> float:
    return 1.0 / (1.0 + math.exp(-(STEPS_OFFSET + STEPS_SLOPE * max(steps, 0))))


def load_solutions(data_path: str | Path = DEFAULT_DATA) -> list[dict]:
    """GSM8K's reference solutions (question, calc_steps, split), or [] when
    the file is not beside labeled.jsonl."""
    path = Path(data_path).parent / SOLUTIONS_FILE
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_rows(path: str | Path = DEFAULT_DATA, extra_rows: Iterable[dict] = ()) -> list[dict]:
    """All rows with a usable label (ambiguous rows are left out) and the
    `extra_rows` (from sources.load_sources), each with its `target`; GSM8K
    rows also carry `calc_steps`."""
    steps = {r["question"].strip(): r["calc_steps"] for r in load_solutions(path)}
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if labelled(row):
                    rows.append(row)
    rows += extra_rows
    for row in rows:
        if not labelled(row):
            continue
        row["target"] = 1.0 if row["label"] == "complex" else 0.0
        if row["source"] == "gsm8k" and row["text"].strip() in steps:
            row["calc_steps"] = steps[row["text"].strip()]
            row["target"] = steps_target(row["calc_steps"])
    return rows


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eval_sources(rows: list[dict]) -> dict[str, list[dict]]:
    """Held-out rows per source: the `test` split of training sources, the
    `dev_cross` sources and the `shape` rows (shapes.py), never trained on."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["split"] in ("test", "dev_cross", "shape"):
            out.setdefault(row["source"], []).append(row)
    return dict(sorted(out.items()))
