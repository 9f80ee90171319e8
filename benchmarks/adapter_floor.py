"""The adapter against its floors, on stand-in deployments built from the
shared outcome table (classifier/gain.py): for each set (each benchmark,
and all of them as one mix) and each of up to 11 (cheap, capable) pairs of
its models whose accuracies there differ by 0.1 or more, half of the
questions (by a hash of the text) are the deployment's feedback store, the
cheap model's outcome on each its label, and the other half is ranked:
mean APGR over the pairs of prompt length, the prior (the artifact), a
plain TF-IDF ridge fitted to the same outcomes (scikit-learn's defaults),
and the adapter (classifier/adapter.py).

    python -m benchmarks.adapter_floor [--label weak|gain] [--splits N] [--json]

`--label weak` (default): a failure is "the cheap model was wrong";
`gain`: "the cheap model was wrong and the capable one right" (what a
shadow comparison that agrees only on right answers would store).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np


def half(text: str, salt: int = 0) -> bool:
    return hashlib.sha256(f"store{salt or ''}:".encode() + text.encode("utf-8")).digest()[0] < 128


def pick_pairs(correct: np.ndarray, k: int = 11) -> list[tuple[int, int]]:
    from classifier.gain import pairs

    found = sorted(pairs(correct), key=lambda p: (p[2], p[0], p[1]))
    if len(found) <= k:
        return [(w, s) for w, s, _ in found]
    idx = np.linspace(0, len(found) - 1, k).round().astype(int)  # spread over the gaps
    return [(found[i][0], found[i][1]) for i in idx]


def plain_ridge(store_texts, failed, texts) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    vec = TfidfVectorizer().fit(store_texts)
    return Ridge().fit(vec.transform(store_texts), failed).predict(vec.transform(texts))


def run_set(prior, texts: list[str], correct: np.ndarray, label: str, splits: int = 1) -> dict:
    """`run_one` over `splits` different halves (by salted hashes), averaged."""
    runs = [run_one(prior, texts, correct, label, salt) for salt in range(splits)]
    return {k: (float(np.mean([r[k] for r in runs])) if isinstance(runs[0][k], float) else runs[0][k]) for k in runs[0]} | {
        "gate_adopted": sum(r["gate_adopted"] for r in runs), "pairs": sum(r["pairs"] for r in runs), "splits": splits}


def run_one(prior, texts: list[str], correct: np.ndarray, label: str, salt: int) -> dict:
    from classifier.adapter import Outcomes, fit_and_gate, fit
    from classifier.evaluate import apgr
    from classifier.model import AdaptedClassifier

    in_store = np.array([half(t, salt) for t in texts])
    store = [t for t, m in zip(texts, in_store) if m]
    held = [t for t, m in zip(texts, in_store) if not m]
    length = np.array([len(t) for t in held], dtype=np.float64)
    prior_p = prior.score(held)
    figures = {k: [] for k in ("length", "prior", "plain_ridge", "adapter")}
    gate_adopted, adapt_seconds = 0, []
    for w, s in pick_pairs(correct[in_store]):
        weak, strong = correct[~in_store, w], correct[~in_store, s]
        sw, ss = correct[in_store, w], correct[in_store, s]
        failed = (1.0 - sw) if label == "weak" else (1.0 - sw) * ss
        # Arrival order: shuffled (the table is grouped by benchmark, traffic is not).
        order = np.random.default_rng(salt).permutation(len(store))
        outcomes = Outcomes([store[i] for i in order], failed[order], np.arange(len(store), dtype=np.float64))
        started = time.monotonic()
        adapter, _ = fit_and_gate(prior, outcomes)  # when adopted, the adapter fitted on all the store
        gate_adopted += adapter is not None
        if adapter is None:  # refused: the same fit, for its ranking all the same
            adapter, _ = fit(prior, outcomes)
        adapt_seconds.append(time.monotonic() - started)
        for name, scores in (("length", length), ("prior", prior_p), ("plain_ridge", plain_ridge(store, failed, held)),
                             ("adapter", AdaptedClassifier(prior, adapter).score(held))):
            figures[name].append(apgr(scores, weak, strong))
    return {"n": len(texts), "pairs": len(figures["prior"]), **{k: float(np.mean(v)) for k, v in figures.items()},
            "gate_adopted": gate_adopted, "adapt_seconds_max": float(max(adapt_seconds))}


def main(argv=None) -> int:
    import classifier
    from classifier.gain import load_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", choices=("weak", "gain"), default="weak")
    parser.add_argument("--model", default=None, help="the prior's artifact folder (default: the committed one)")
    parser.add_argument("--splits", type=int, default=1, help="average over this many different halves (default 1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    prior = classifier.load(args.model)
    table = load_table()
    if table is None:
        raise SystemExit("no outcome table: shared/data/outcomes/llmrouter_dcrouter_train.jsonl beside the checkout, or $TRIAGE_OUTCOMES")
    sets = {"mix": np.ones(len(table), dtype=bool)}
    sets.update({str(b): table.benchmarks == b for b in sorted(set(table.benchmarks)) if (table.benchmarks == b).sum() >= 300})
    report = {}
    for name, mask in sets.items():
        sub = table.subset(mask)
        report[name] = run_set(prior, sub.texts, sub.correct, args.label, args.splits)
        if not args.json:
            r = report[name]
            print(f"{name:<16} n={r['n']:>5} pairs={r['pairs']:>2}  length {r['length']:.3f}  prior {r['prior']:.3f}  "
                  f"plain ridge {r['plain_ridge']:.3f}  adapter {r['adapter']:.3f}  (gate adopted {r['gate_adopted']}/{r['pairs']}, "
                  f"gate and fit <= {r['adapt_seconds_max']:.1f} s)", flush=True)
    if args.json:
        print(json.dumps({"label": args.label, "sets": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
