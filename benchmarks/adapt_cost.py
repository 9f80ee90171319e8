"""What the adapter costs: `python -m classifier adapt` on a feedback store of
7,000 outcomes with real, varied questions (the shared labeled questions;
the cheap tier fails 70 % of the complex ones and 10 % of the simple ones,
at random), timed as a whole process; then the prior beside prior +
adapter, scoring in alternating processes (`python -m classifier bench
--beside`).

    python -m benchmarks.adapt_cost [--rows 7000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_store(path: Path, rows: int, seed: int = 0) -> None:
    from classifier.data import DEFAULT_DATA
    from server.routing.feedback import Answered, FeedbackTable

    rng = random.Random(seed)
    labelled = [json.loads(line) for line in open(DEFAULT_DATA, encoding="utf-8") if line.strip()]
    labelled = [r for r in labelled if r["label"] in ("simple", "complex")]
    store = FeedbackTable.open(str(path), max_rows=10**7)
    for i, row in enumerate(rng.sample(labelled, rows)):
        good = rng.random() >= (0.7 if row["label"] == "complex" else 0.1)
        store.record(f"r{i}:shadow", Answered("small", "S", 0.3, 0.45, "classifier", time.time(), row["text"]), None, good, "shadow-up")
    store.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=7000)
    parser.add_argument("--out", default=None, help="write adapt_cost.json here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store, art = Path(tmp) / "feedback.sqlite", Path(tmp) / "adapted"
        build_store(store, args.rows)
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "classifier", "adapt", "--feedback", str(store), "--out", str(art)],
                             cwd=ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - started
        report = json.loads(run.stdout)
        bench = subprocess.run([sys.executable, "-m", "classifier", "--model", str(art), "bench", "--beside", str(ROOT / "classifier" / "artifacts"),
                                "-n", "3000", "--repeats", "9", "--rounds", "3"], cwd=ROOT, capture_output=True, text=True, check=True)
    result = {"rows": args.rows, "adapt_process_seconds": round(seconds, 2), "adopted": report["adopted"],
              "held_out_apgr": report.get("held_out_apgr"), "fit": report.get("fit"), "bench": json.loads(bench.stdout)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out, "adapt_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
