"""The target share, replayed: the labelled questions' real scores (the
committed classifier on shared/data/questions, read where they are, never
copied) stream through the router's own controller (server/routing/adaptive.py),
and through another revision's with --against, on the same streams:

    python -m benchmarks.target_share [--against REV] [--seeds 10] [--out docs/target_share.json]

Mixes, each 6 windows long, target 30 % to the large tier:
- shift up: 20 % complex, then 80 % from the middle on;
- shift down: 80 %, then 20 %;
- ramp: 20 % rising to 80 % over the middle two windows;
  (these three draw from the labelled questions, whose simple and complex
  scores overlap);
- kinds up: only simple questions, then only complex ones (the operator's
  check in issue 28), and kinds down, the other way round; these two draw
  from benchmarks.questions' generated kinds, whose scores barely overlap:
  the case where a controller that pays back the past pins its cut.

Per controller, mix and window size (1,000 and 200), over the seeds:
- window share: the worst distance from the target of any whole window but
  the first (warming up) and the ones a shift touches (the contract: +-2
  points);
- worst settled block: the largest distance from the target of any block of
  200 decisions but the first of the stream and the first after each shift
  begins, in points and in binomial standard deviations of a 200-block; the
  median seed's and the worst seed's;
- the cut's range over the settled blocks, and how many of them sent under
  5 % to the large tier (a cut pinned at the top: complex questions all to
  the small tier);
and the same for an oracle that knew each decision's mix in advance and cut
at its quantile: what chance alone leaves.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET, BLOCK = 0.30, 200
WINDOWS = (1000, 200)
PHASE_WINDOWS = 3  # each mix: three windows before its middle and three after


def labelled_scores() -> tuple[np.ndarray, np.ndarray, float]:
    import classifier
    from classifier.data import DEFAULT_DATA

    clf = classifier.load()
    rows = [json.loads(line) for line in open(DEFAULT_DATA, encoding="utf-8") if line.strip()]
    score = lambda label: clf.score([r["text"] for r in rows if r["label"] == label])  # noqa: E731
    return score("simple"), score("complex"), clf.threshold


def generated_scores(n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Scores of benchmarks.questions' generated simple and complex kinds."""
    import random

    import classifier

    from .questions import complex_question, simple_question

    clf, rng = classifier.load(), random.Random(20261202)
    return clf.score([simple_question(rng) for _ in range(n)]), clf.score([complex_question(rng) for _ in range(n)])


MIXES = ("shift up", "shift down", "ramp", "kinds up", "kinds down")


def complex_share(mix: str, n: int, window: int) -> np.ndarray:
    """The chance that decision i is a complex question, for each i."""
    i, middle = np.arange(n), n // 2
    if mix == "shift up":
        return np.where(i < middle, 0.2, 0.8)
    if mix == "shift down":
        return np.where(i < middle, 0.8, 0.2)
    if mix == "ramp":
        return np.clip(0.2 + 0.6 * (i - (middle - window)) / (2 * window), 0.2, 0.8)
    return np.where(i < middle, 0.0, 1.0) if mix == "kinds up" else np.where(i < middle, 1.0, 0.0)


def settled_blocks(mix: str, n: int, window: int) -> list[int]:
    """The blocks counted: not the first, not the first after a shift begins
    (a ramp's: the block where it starts and the one after it ends)."""
    middle = n // 2
    skip = {0, middle // BLOCK}
    if mix == "ramp":
        skip |= {(middle - window) // BLOCK, (middle + window) // BLOCK}
    return [b for b in range(n // BLOCK) if b not in skip]


class Oracle:
    """Not a controller: the cut each decision would have at the target's
    quantile of the mix it is drawn from, known in advance. What is left of
    its blocks' distance from the target is chance alone."""

    def __init__(self, simple, complex_, shares: np.ndarray):
        rng = np.random.default_rng(0)
        self._cut = []  # by complex share in hundredths
        for q in range(101):
            draw = np.where(rng.random(20000) < q / 100, rng.choice(complex_, 20000), rng.choice(simple, 20000))
            self._cut.append(float(np.quantile(draw, 1 - TARGET)))
        self._shares = shares

    def cut(self, i: int) -> float:
        return self._cut[round(float(self._shares[i]) * 100)]


def replay(controller_class, simple, complex_, start_cut: float, mix: str, window: int, seed: int) -> dict:
    """One stream through a controller (or the Oracle, controller_class None)."""
    rng = np.random.default_rng(seed)
    n = 2 * PHASE_WINDOWS * window
    shares = complex_share(mix, n, window)
    is_complex = rng.random(n) < shares
    scores = np.where(is_complex, rng.choice(complex_, n), rng.choice(simple, n))
    controller = controller_class(["small", "large"], [TARGET], [start_cut], window_requests=window) if controller_class else None
    oracle = Oracle(simple, complex_, shares) if controller is None else None
    large, cuts = np.empty(n, dtype=bool), np.empty(n)
    for i, p in enumerate(scores):
        cuts[i] = controller.cuts[0] if controller else oracle.cut(i)
        large[i] = p >= cuts[i]
        if controller:
            controller.record(float(p), int(large[i]), float(i))
    windows = large.reshape(-1, window).mean(axis=1)
    touched = {0, PHASE_WINDOWS} | ({PHASE_WINDOWS - 1, PHASE_WINDOWS + 1} if mix == "ramp" else set())
    blocks = large.reshape(-1, BLOCK).mean(axis=1)
    counted = settled_blocks(mix, n, window)
    settled_cuts = cuts.reshape(-1, BLOCK)[counted]
    return {"window_worst": float(max(abs(w - TARGET) for i, w in enumerate(windows) if i not in touched)),
            "block_worst": float(max(abs(blocks[b] - TARGET) for b in counted)),
            "cut_min": float(settled_cuts.min()), "cut_max": float(settled_cuts.max()),
            "starved_blocks": int(sum(blocks[b] < 0.05 for b in counted))}


def controller_at(rev: str):
    """ShareController as it is at git revision `rev` (its module alone)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:server/routing/adaptive.py"], capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"adaptive_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"adaptive_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ShareController


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.target_share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", metavar="REV", help="also the controller of git revision REV, on the same streams")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default="docs/target_share.json")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("triage.routing").setLevel(logging.WARNING)
    from server.routing.adaptive import ShareController

    controllers = {"this": ShareController, **({args.against: controller_at(args.against)} if args.against else {}), "oracle": None}
    simple, complex_, cut = labelled_scores()
    kinds = generated_scores()
    sd = math.sqrt(TARGET * (1 - TARGET) / BLOCK)
    results = []
    print(f"Target {TARGET:.0%}; a block is {BLOCK} decisions (binomial sd {sd * 100:.1f} points); worst over {args.seeds} seeds.\n")
    print("| controller | mix | window | worst window | worst settled block: median seed | worst seed | cut range (settled) | starved blocks |")
    print("|---|---|---|---|---|---|---|---|")
    for window in WINDOWS:
        for mix in MIXES:
            pools = kinds if mix.startswith("kinds") else (simple, complex_)
            for name, controller_class in controllers.items():
                runs = [replay(controller_class, *pools, cut, mix, window, seed) for seed in range(args.seeds)]
                worst = sorted(x["block_worst"] for x in runs)
                r = {"controller": name, "mix": mix, "window": window, "window_worst": max(x["window_worst"] for x in runs),
                     "block_worst_median": float(np.median(worst)), "block_worst": worst[-1], "cut_min": min(x["cut_min"] for x in runs),
                     "cut_max": max(x["cut_max"] for x in runs), "starved_blocks": sum(x["starved_blocks"] for x in runs)}
                results.append(r)
                print(f"| {name} | {mix} | {window} | {r['window_worst'] * 100:.1f} points | {r['block_worst_median'] * 100:.1f} points "
                      f"({r['block_worst_median'] / sd:.1f} sd) | {r['block_worst'] * 100:.1f} points ({r['block_worst'] / sd:.1f} sd) | "
                      f"{r['cut_min']:.2f}-{r['cut_max']:.2f} | {r['starved_blocks']} |", flush=True)
    Path(args.out).write_text(json.dumps({"target": TARGET, "block": BLOCK, "seeds": args.seeds, "start_cut": cut, "against": args.against,
                                          "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
