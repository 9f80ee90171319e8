"""Reading the labeled questions (shared/data/questions/labeled.jsonl).

The rows stay outside the repository (some sources are share-alike); only
their sha256 is recorded with the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_RELATIVE = Path("shared/data/questions/labeled.jsonl")


def _default_data() -> Path:
    """$TRIAGE_QUESTIONS, else the nearest shared/ beside the checkout or one
    of its ancestors (the workplace keeps it next to the repository)."""
    if "TRIAGE_QUESTIONS" in os.environ:
        return Path(os.environ["TRIAGE_QUESTIONS"])
    repo = Path(__file__).resolve().parents[1]
    for folder in repo.parents:
        if (folder / _RELATIVE).is_file():
            return folder / _RELATIVE
    return repo.parent / _RELATIVE


DEFAULT_DATA = _default_data()
DEV_CROSS = ("nq_open", "mt_bench", "vicuna_bench")


def load_rows(path: str | Path = DEFAULT_DATA) -> list[dict]:
    """All rows with a usable label (ambiguous rows are left out)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row["label"] in ("simple", "complex"):
                    rows.append(row)
    return rows


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eval_sources(rows: list[dict]) -> dict[str, list[dict]]:
    """Held-out rows per source: the `test` split of training sources and the
    `dev_cross` sources that were never trained on."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["split"] in ("test", "dev_cross"):
            out.setdefault(row["source"], []).append(row)
    return dict(sorted(out.items()))
