"""Threshold calibration by traffic share, as RouteLLM calibrates: pick the
score quantile that sends the wanted fraction of a reference sample to the
large tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .model import ARTIFACT_DIR, METADATA_FILE


def threshold_for_share(scores: np.ndarray, target_large_share: float) -> float:
    """Smallest threshold t with mean(scores >= t) as close to the target as
    the sample allows (ties aside, exactly round(target * n) rows)."""
    if not 0.0 <= target_large_share <= 1.0:
        raise ValueError("target large share must be in [0, 1]")
    if scores.size == 0:
        raise ValueError("the sample is empty")
    ordered = np.sort(scores)
    k = int(round(target_large_share * ordered.size))
    if k == 0:
        return float(min(1.0, np.nextafter(ordered[-1], np.inf)))
    return float(ordered[ordered.size - k])


def write_threshold(threshold: float, target: float, sample: str, n: int, realised: float, folder: Path = ARTIFACT_DIR) -> None:
    write_metadata_threshold(folder, threshold, f"calibrated: large share {realised:.3f} (target {target:.3f}) on {n} prompts from {Path(sample).name}")


def write_metadata_threshold(folder: Path, threshold: float, source: str) -> None:
    """The artifact's threshold, and where it came from, in its metadata."""
    path = Path(folder) / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["threshold"] = threshold
    metadata["threshold_source"] = source
    path.write_text(json.dumps(metadata, indent=2) + "\n")
