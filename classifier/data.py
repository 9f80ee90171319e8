"""Reading the labeled questions (shared/data/questions/labeled.jsonl).

The rows stay outside the repository (some sources are share-alike); only
their sha256 is recorded with the artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("TRIAGE_QUESTIONS", Path(__file__).resolve().parents[1].parent / "shared/data/questions/labeled.jsonl"))
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
