"""How good the routing score is, measured three ways, each next to the
prompt-length baseline:

1. accuracy per held-out source at the threshold, and the macro average;
2. cross-source: train on every source but one, score the one left out
   (`cross_source`, in train.py), so a model that only learned a source's
   style shows up;
3. ranking inside one kind of question, where the label is constant and only
   the order matters (RouteLLM's setting):
   - GSM8K test: Spearman between `p_complex` and the reference solution's
     number of calculation steps;
   - outcomes, where we know per question whether a weaker model was right
     and a stronger one: the area under the quality/cost curve (APGR, as
     RouteLLM computes it) when a score decides which questions get the
     stronger model (gain.py: the shared outcome table; adapter.py: a
     deployment's own store).
"""

from __future__ import annotations

import numpy as np

from .data import DEV_CROSS, eval_sources


def length_baseline(texts: list[str]) -> np.ndarray:
    """The accuracy baseline to beat: more than 20 words means complex."""
    return np.array([len(t.split()) > 20 for t in texts])


def length_score(texts: list[str]) -> np.ndarray:
    """The ranking baseline to beat: the prompt's length in characters."""
    return np.array([len(t) for t in texts], dtype=np.float64)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 5) -> list[dict]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) if hi < 1.0 else (p <= hi))
        if inside.any():
            table.append(
                {"bin": f"{lo:.1f}-{hi:.1f}", "n": int(inside.sum()), "mean_p": float(p[inside].mean()), "frac_complex": float(y[inside].mean())}
            )
    return table


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def apgr(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> float:
    """Average performance gap recovered (RouteLLM): route the questions with
    the highest scores to the strong model, for every share of strong calls
    from 0 to 1; at each share, the quality recovered is
    (quality - weak quality) / (strong quality - weak quality); APGR is the
    area under that curve. Tied scores are routed together (their gain is
    averaged), so a constant score gets exactly the random router's 0.5 (in
    expectation) and cannot win by tie order."""
    scores, weak, strong = (np.asarray(a, dtype=np.float64) for a in (scores, weak, strong))
    gap = strong.sum() - weak.sum()
    if scores.size == 0 or gap <= 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    gain = (strong - weak)[order]
    ordered = scores[order]
    # Average the gain inside each group of equal scores.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums = np.add.reduceat(gain, starts)
    sizes = np.diff(np.r_[starts, ordered.size])
    gain = np.repeat(sums / sizes, sizes)
    recovered = np.r_[0.0, np.cumsum(gain)] / gap
    return float(np.trapezoid(recovered, dx=1.0 / scores.size))


def steps_ranking(clf, solutions: list[dict]) -> dict:
    """Within GSM8K test: does p_complex order problems by their number of
    calculation steps? Also APGR with "needs the strong model" := more steps
    than the median (a proxy outcome), next to prompt length."""
    test = [r for r in solutions if r["split"] == "test"]
    if not test:
        return {}
    texts = [r["question"] for r in test]
    steps = np.array([r["calc_steps"] for r in test], dtype=np.float64)
    p = clf.score(texts)
    length = length_score(texts)
    hard = (steps > np.median(steps)).astype(np.float64)
    return {
        "n": len(test),
        "spearman_steps": spearman(p, steps),
        "spearman_steps_length": spearman(length, steps),
        "apgr_steps_above_median": apgr(p, 1 - hard, np.ones_like(hard)),
        "apgr_steps_above_median_length": apgr(length, 1 - hard, np.ones_like(hard)),
        "p_complex_min": float(p.min()),
        "share_complex": float((p >= clf.threshold).mean()),
    }


def evaluate(clf, rows: list[dict], threshold: float | None = None) -> dict:
    threshold = clf.threshold if threshold is None else threshold
    per_source = {}
    all_p, all_y = [], []
    for source, group in eval_sources(rows).items():
        texts = [r["text"] for r in group]
        y = np.array([r["label"] == "complex" for r in group])
        p = clf.score(texts)
        all_p.append(p)
        all_y.append(y)
        per_source[source] = {
            "split": group[0]["split"],
            "n": len(group),
            "accuracy": float(((p >= threshold) == y).mean()),
            "length_baseline": float((length_baseline(texts) == y).mean()),
            "brier": float(np.mean((p - y) ** 2)),
        }
    # What another threshold would trade: macro and worst source.
    sweep = []
    for t in np.round(np.arange(0.35, 0.651, 0.05), 2):
        accuracies = [((p >= t) == y).mean() for p, y in zip(all_p, all_y)]
        sweep.append({"threshold": float(t), "macro_accuracy": float(np.mean(accuracies)), "min_accuracy": float(np.min(accuracies))})
    p, y = np.concatenate(all_p), np.concatenate(all_y)
    dev = [per_source[s]["accuracy"] for s in DEV_CROSS if s in per_source]
    never = [m["accuracy"] for m in per_source.values() if m["split"] in ("dev_cross", "shape")]
    return {
        "threshold": threshold,
        "per_source": per_source,
        "dev_cross_macro_accuracy": float(np.mean(dev)) if dev else float("nan"),
        # The sources and shapes never trained on: the check the hidden kinds resemble.
        "never_trained_macro_accuracy": float(np.mean(never)) if never else float("nan"),
        "never_trained_min_accuracy": float(np.min(never)) if never else float("nan"),
        "all_sources_macro_accuracy": float(np.mean([v["accuracy"] for v in per_source.values()])),
        "brier_all_heldout": float(np.mean((p - y) ** 2)),
        "reliability_all_heldout": reliability(p, y),
        "threshold_sweep": sweep,
    }


def format_report(report: dict) -> str:
    lines = [f"threshold {report['threshold']:.3f}", f"{'source':<19}{'split':<11}{'n':>6}{'accuracy':>10}{'length':>9}{'brier':>8}"]
    for source, m in report["per_source"].items():
        lines.append(f"{source:<19}{m['split']:<11}{m['n']:>6}{m['accuracy']:>10.3f}{m['length_baseline']:>9.3f}{m['brier']:>8.3f}")
    lines.append(f"dev_cross macro accuracy   {report['dev_cross_macro_accuracy']:.3f}")
    lines.append(f"all-sources macro accuracy {report['all_sources_macro_accuracy']:.3f}")
    if "never_trained_macro_accuracy" in report:
        lines.append(f"never-trained sources and shapes: macro {report['never_trained_macro_accuracy']:.3f}, "
                     f"worst {report['never_trained_min_accuracy']:.3f}")
    lines.append(f"Brier (all held-out rows)  {report['brier_all_heldout']:.3f}")
    lines.append("other thresholds: macro accuracy / worst source")
    lines.append("  " + "  ".join(f"{t['threshold']:.2f}: {t['macro_accuracy']:.3f}/{t['min_accuracy']:.3f}" for t in report["threshold_sweep"]))
    lines.append("reliability (all held-out rows): bin, n, mean p_complex, fraction complex")
    for b in report["reliability_all_heldout"]:
        lines.append(f"  {b['bin']}  {b['n']:>6}  {b['mean_p']:.3f}  {b['frac_complex']:.3f}")
    if report.get("cross_source"):
        lines.append("cross-source (trained without the source, scored on all of its rows): accuracy, length baseline")
        for source, m in report["cross_source"]["per_source"].items():
            lines.append(f"  {source:<19}{m['n']:>6}{m['accuracy']:>10.3f}{m['length_baseline']:>9.3f}")
        lines.append(f"  macro {report['cross_source']['macro_accuracy']:.3f} (length {report['cross_source']['macro_length_baseline']:.3f})")
    if report.get("steps_ranking"):
        s = report["steps_ranking"]
        lines.append(
            f"GSM8K test ranking by calculation steps (n={s['n']}): Spearman {s['spearman_steps']:.3f} (length {s['spearman_steps_length']:.3f}); "
            f"APGR, more steps than the median {s['apgr_steps_above_median']:.3f} (length {s['apgr_steps_above_median_length']:.3f})"
        )
    lines += format_gain(report)
    return "\n".join(lines)


def format_gain(report: dict) -> list[str]:
    """The gain rankings (gain.py): mean APGR over weak/strong pairs."""
    lines = []
    g = report.get("gain_ranking")
    if g:
        lines.append(f"gain ranking, held-out outcome rows (n={g['n']}, {g['pairs']} pairs with a 10-point gap): "
                     f"mean pair APGR {g['apgr']:.3f} (length {g['apgr_length']:.3f})")
        lines.append("  " + "  ".join(f"{b}: {m['apgr']:.3f}/{m['apgr_length']:.3f}" for b, m in g["per_benchmark"].items()))
    old = report.get("gain_ranking_against")
    if old:
        lines.append(f"  the classifier at {old['revision']}, same rows: mean pair APGR {old['apgr']:.3f}")
    return lines
