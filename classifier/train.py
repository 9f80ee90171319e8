"""Train the complexity classifier and write the artifact, metadata and card.

Reproducible: the data file's sha256 is recorded, the solver is
deterministic and the seed is fixed, so the same data gives the same model.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from .data import file_sha256, load_rows
from .evaluate import evaluate
from .features import DENSE_FEATURE_NAMES, dense_features, normalize
from .model import ARTIFACT_DIR, METADATA_FILE, MODEL_FILE, Classifier

log = logging.getLogger("triage.classifier")

SEED = 20261122
HYPERPARAMETERS = {
    "word_ngram_range": (1, 2),
    "word_min_df": 2,
    "word_max_features": 50000,
    "C": 1.0,
    # Each row is weighted 1/sqrt(rows in its source): GSM8K (8.8k rows, all
    # complex) and TREC (5k, all simple) must not teach "word problem vs
    # factoid" as the only distinction, yet the small chit-chat source must not
    # be blown up row by row either.
    "source_weighting": "inverse_sqrt",
}


def build_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    hp = HYPERPARAMETERS
    return Pipeline(
        [
            (
                "features",
                FeatureUnion(
                    [
                        (
                            "word",
                            TfidfVectorizer(
                                preprocessor=normalize,
                                ngram_range=hp["word_ngram_range"],
                                min_df=hp["word_min_df"],
                                max_features=hp["word_max_features"],
                                sublinear_tf=True,
                                dtype=np.float64,
                            ),
                        ),
                        ("dense", Pipeline([("cues", FunctionTransformer(dense_features)), ("scale", StandardScaler())])),
                    ]
                ),
            ),
            ("lr", LogisticRegression(C=hp["C"], max_iter=5000, random_state=SEED)),
        ]
    )


def sample_weights(rows: list[dict]) -> np.ndarray:
    counts = Counter(r["source"] for r in rows)
    w = np.array([1.0 / np.sqrt(counts[r["source"]]) for r in rows])
    return w / w.mean()


def versions() -> dict:
    import sklearn
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "skops": skops.__version__, "numpy": np.__version__}


def train(data_path: str | Path, out_dir: str | Path = ARTIFACT_DIR, threshold: float = 0.5) -> dict:
    import skops.io as sio

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_rows(data_path)
    train_rows = [r for r in rows if r["split"] == "train"]
    log.info("training on %d rows from %s", len(train_rows), sorted({r["source"] for r in train_rows}))
    pipeline = build_pipeline()
    started = time.monotonic()
    pipeline.fit(
        [r["text"] for r in train_rows],
        np.array([r["label"] == "complex" for r in train_rows], dtype=int),
        lr__sample_weight=sample_weights(train_rows),
    )
    fit_seconds = time.monotonic() - started
    # numpy ints in the vocabulary make skops store 50k separate arrays
    # (quadratic time, huge file); plain ints are stored as JSON.
    word = dict(pipeline.named_steps["features"].transformer_list)["word"]
    word.vocabulary_ = {term: int(j) for term, j in word.vocabulary_.items()}
    metadata = {
        "threshold": threshold,
        "threshold_source": "default 0.5 (probability); `python -m classifier calibrate` replaces it",
        "data_file": Path(data_path).name,
        "data_sha256": file_sha256(data_path),
        "train_counts": {f"{s}/{l}": n for (s, l), n in sorted(Counter((r["source"], r["label"]) for r in train_rows).items())},
        "features": ["word TF-IDF 1-2 grams on normalised text", *DENSE_FEATURE_NAMES],
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in HYPERPARAMETERS.items()},
        "seed": SEED,
        "fit_seconds": round(fit_seconds, 1),
        "versions": versions(),
    }
    clf = Classifier(pipeline, metadata)
    metadata["evaluation"] = evaluate(clf, rows)
    # The vocabulary is stored as JSON inside the zip: deflate it (55 MB -> a few).
    sio.dump(pipeline, out_dir / MODEL_FILE, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
