"""The target share's trade-off, measured by replay: the labelled questions'
real scores (the committed classifier on shared/data/questions, read where
they are, never copied) stream through the router's own controller
(server/adaptive.py) as a mix that shifts from 20 % to 80 % complex halfway.

For each window size and correction horizon, over 10 seeds:
- worst window: the largest distance from the target of any whole window
  but the first (warming up) and the one holding the shift; the mean over
  seeds and the worst seed;
- agreement: the share of decisions equal to an oracle's that knew each
  half's score distribution in advance and cut it at the target's quantile
  (how closely the moving cut still follows the scores' order).

    python -m benchmarks.target_share [--out docs/target_share.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TARGET, SEEDS = 0.30, 10
SETTINGS = [(200, 1 / 32), (200, 1 / 16), (1000, 1 / 32), (1000, 1 / 16), (1000, 1 / 8)]


def labelled_scores() -> tuple[np.ndarray, np.ndarray, float]:
    import classifier
    from classifier.data import DEFAULT_DATA

    clf = classifier.load()
    rows = [json.loads(line) for line in open(DEFAULT_DATA, encoding="utf-8") if line.strip()]
    score = lambda label: clf.score([r["text"] for r in rows if r["label"] == label])  # noqa: E731
    return score("simple"), score("complex"), clf.threshold


def replay(simple: np.ndarray, complex_: np.ndarray, start_cut: float, window: int, correction: float, seed: int) -> dict:
    from server.adaptive import ShareController

    rng = np.random.default_rng(seed)
    n = 10 * window
    is_complex = rng.random(n) < np.where(np.arange(n) < n // 2, 0.2, 0.8)
    scores = np.where(is_complex, rng.choice(complex_, n), rng.choice(simple, n))
    controller = ShareController(["small", "large"], [TARGET], [start_cut], window_requests=window, correction=correction)
    large = np.empty(n, dtype=bool)
    for i, p in enumerate(scores):
        large[i] = p >= controller.cuts[0]
        controller.record(float(p), int(large[i]), float(i))
    shares = large.reshape(10, window).mean(axis=1)
    oracle = np.concatenate([half >= np.quantile(half, 1 - TARGET) for half in (scores[: n // 2], scores[n // 2:])])
    counted = np.r_[np.arange(window, n // 2), np.arange(n // 2 + window, n)]  # not warming up, not the shift's window
    return {"worst": float(max(abs(s - TARGET) for i, s in enumerate(shares) if i not in (0, 5))),
            "agreement": float((large[counted] == oracle[counted]).mean()),
            "fixed_cut_shares": [float((scores[: n // 2] >= start_cut).mean()), float((scores[n // 2:] >= start_cut).mean())]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.target_share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/target_share.json")
    args = parser.parse_args(argv)
    simple, complex_, cut = labelled_scores()
    results = []
    print("| window | correction | worst window, mean over seeds | worst window, worst seed | agreement with the oracle |")
    print("|---|---|---|---|---|")
    for window, correction in SETTINGS:
        runs = [replay(simple, complex_, cut, window, correction, seed) for seed in range(SEEDS)]
        r = {"window": window, "correction": correction, "worst_mean": float(np.mean([x["worst"] for x in runs])),
             "worst_max": float(max(x["worst"] for x in runs)), "agreement": float(np.mean([x["agreement"] for x in runs])),
             "fixed_cut_shares": runs[0]["fixed_cut_shares"]}
        results.append(r)
        print(f"| {window} | 1/{round(1 / correction)} | {r['worst_mean'] * 100:.1f} points | {r['worst_max'] * 100:.1f} points | "
              f"{r['agreement']:.3f} |", flush=True)
    fixed = results[0]["fixed_cut_shares"]
    print(f"\nThe configured cut ({cut:.2f}) alone sends {fixed[0]:.0%} to the large tier before the shift and {fixed[1]:.0%} after.")
    Path(args.out).write_text(json.dumps({"target": TARGET, "seeds": SEEDS, "start_cut": cut, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
