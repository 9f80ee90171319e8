"""Accuracy per source, macro average over dev_cross, the length baseline,
and calibration (Brier score and a reliability table)."""

from __future__ import annotations

import numpy as np

from .data import DEV_CROSS, eval_sources


def length_baseline(texts: list[str]) -> np.ndarray:
    """The baseline to beat: more than 20 words means complex."""
    return np.array([len(t.split()) > 20 for t in texts])


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
    p, y = np.concatenate(all_p), np.concatenate(all_y)
    dev = [per_source[s]["accuracy"] for s in DEV_CROSS if s in per_source]
    return {
        "threshold": threshold,
        "per_source": per_source,
        "dev_cross_macro_accuracy": float(np.mean(dev)) if dev else float("nan"),
        "all_sources_macro_accuracy": float(np.mean([v["accuracy"] for v in per_source.values()])),
        "brier_all_heldout": float(np.mean((p - y) ** 2)),
        "reliability_all_heldout": reliability(p, y),
    }


def format_report(report: dict) -> str:
    lines = [f"threshold {report['threshold']:.3f}", f"{'source':<14}{'split':<11}{'n':>6}{'accuracy':>10}{'length':>9}{'brier':>8}"]
    for source, m in report["per_source"].items():
        lines.append(f"{source:<14}{m['split']:<11}{m['n']:>6}{m['accuracy']:>10.3f}{m['length_baseline']:>9.3f}{m['brier']:>8.3f}")
    lines.append(f"dev_cross macro accuracy   {report['dev_cross_macro_accuracy']:.3f}")
    lines.append(f"all-sources macro accuracy {report['all_sources_macro_accuracy']:.3f}")
    lines.append(f"Brier (all held-out rows)  {report['brier_all_heldout']:.3f}")
    lines.append("reliability (all held-out rows): bin, n, mean p_complex, fraction complex")
    for b in report["reliability_all_heldout"]:
        lines.append(f"  {b['bin']}  {b['n']:>6}  {b['mean_p']:.3f}  {b['frac_complex']:.3f}")
    return "\n".join(lines)
