"""The trained classifier as the server uses it: load once, score texts.

The artifact is a scikit-learn Pipeline (word TF-IDF + dense cue features ->
logistic regression) persisted with skops. scikit-learn's per-call overhead
(input validation, sparse matrix assembly) costs about a millisecond for one
text, and its batch path re-tokenises each text for every block of
features, so texts are scored by `_FastLinear`, which evaluates the same
fitted linear model from one tokenisation (features.featurize) with
dictionary lookups. Both give the same probabilities
(tests/unit/test_classifier.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
ADAPTER_FILE = "adapter.json"  # a deployment's adapter (adapter.py), when one was adopted

# The only non-library objects the artifact may reference. Anything else in
# the file is refused at load time (skops' trusted-type check).
TRUSTED_TYPES = ["classifier.features.dense_features", "classifier.features.terms"]


def _import_skops_io():
    """skops.io, imported without torch. On import, skops lists
    scikit-learn's estimators by importing every scikit-learn module, and one
    of them (array-API support, which this classifier never uses) imports
    torch when it is installed: ~300 MB and seconds for a router whose tiers
    are all remote. While skops is imported, torch cannot be: that module
    fails, scikit-learn's walk skips it, and torch stays importable later
    for an in-process engine."""
    import sys

    if "skops.io" in sys.modules or "torch" in sys.modules:
        import skops.io as sio

        return sio
    blocker = _NoTorch()
    sys.meta_path.insert(0, blocker)
    try:
        import skops.io as sio
    finally:
        sys.meta_path.remove(blocker)
    return sio


class _NoTorch:
    """An import finder that refuses torch (and leaves sys.modules alone,
    so array-API helpers that look for torch there see it absent)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"{name} is not imported while skops loads", name=name)
        return None


def trusted_types(path: Path) -> list[str]:
    """Every type skops finds in the file must be in the library's defaults
    or in TRUSTED_TYPES; raise otherwise."""
    sio = _import_skops_io()

    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise ValueError(f"{path} references types that are not trusted: {unexpected}")
    return untrusted


class _FastLinear:
    """sigmoid(w · [tfidf(text), scaled dense(text)] + b), without scipy.

    The word block is binary TF-IDF, L2-normalised: for the set of a text's
    terms in the vocabulary, its dot product with the weights is
    sum(idf·w) / sqrt(sum(idf²)), so each term is one dictionary lookup of
    those two numbers."""

    def __init__(self, pipeline):
        from .features import featurize

        union = pipeline.named_steps["features"]
        word = dict(union.transformer_list)["word"]
        dense = dict(union.transformer_list)["dense"]
        if not word.binary:
            raise ValueError("the fast path needs a binary TF-IDF word block: retrain with `python -m classifier train`")
        lr = pipeline.named_steps["lr"]
        coef = lr.coef_[0]
        n_word = len(word.vocabulary_)
        # The union multiplies each block by its transformer weight.
        weights = union.transformer_weights or {}
        word_coef = coef[:n_word] * weights.get("word", 1.0)
        dense_coef = coef[n_word:] * weights.get("dense", 1.0)
        idf = word.idf_
        self._vocab = {tok: (float(idf[j] * word_coef[j]), float(idf[j] * idf[j])) for tok, j in word.vocabulary_.items()}
        scaler = dense.steps[-1][1]
        self._featurize = featurize
        # Plain floats: for one text, a Python dot product of 20 numbers is
        # several times cheaper than building numpy arrays.
        self._dense_w = [float(w) for w in dense_coef / scaler.scale_]
        self._bias = float(lr.intercept_[0]) + float(-(scaler.mean_ / scaler.scale_) @ dense_coef)

    def logit(self, terms, dense) -> float:
        """The prior's log-odds for one text's (distinct terms, dense features)."""
        return self._bias + sum(map(float.__mul__, self._dense_w, dense)) + terms_dot(self._vocab, terms)

    def score(self, text: str) -> float:
        terms, dense = self._featurize(text)
        return sigmoid(self.logit(set(terms), dense))


def terms_dot(vocab: dict[str, tuple[float, float]], terms) -> float:
    """A binary, L2-normalised TF-IDF row's dot product with a weight
    vector, from `vocab` (term -> (idf * weight, idf squared)) and a text's
    distinct terms: sum(idf * w) / sqrt(sum(idf**2)) over the terms it knows.
    The prior and the adapter (adapter.py) score with it."""
    get = vocab.get
    dot = norm_sq = 0.0
    for term in terms:
        entry = get(term)
        if entry is not None:
            dot += entry[0]
            norm_sq += entry[1]
    return dot / math.sqrt(norm_sq) if norm_sq > 0.0 else 0.0


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def _text(t) -> str:
    """Odd input is never an error: non-strings are their str(), None empty."""
    return t if t.__class__ is str else "" if t is None else str(t)


class Classifier:
    """Scores texts with p_complex, the probability the large tier is needed."""

    def __init__(self, pipeline, metadata: dict):
        self.pipeline = pipeline
        self.metadata = metadata
        self.threshold = float(metadata.get("threshold", 0.5))
        self._fast = _FastLinear(pipeline)

    def score(self, texts: Sequence[str] | Iterable[str]) -> np.ndarray:
        """p_complex in [0, 1] per text, in order. Never raises on odd text:
        non-strings are treated as their str(), None as empty."""
        fast = self._fast.score
        return np.array([fast(_text(t)) for t in texts], dtype=np.float64)

    def label(self, p_complex: float, threshold: float | None = None) -> str:
        return "complex" if p_complex >= (self.threshold if threshold is None else threshold) else "simple"


class AdaptedClassifier(Classifier):
    """The prior with a deployment's adapter (adapter.py): one tokenisation,
    the prior's logit, then the adapter's raw score mapped onto the prior's
    scale. Same interface as the prior; `prior` stays reachable."""

    def __init__(self, prior: Classifier, adapter, adapter_info: dict | None = None):
        self.prior, self.adapter = prior, adapter
        self.pipeline, self.threshold, self._fast = prior.pipeline, prior.threshold, prior._fast
        self.metadata = {**prior.metadata, "adapter": adapter_info or {}}

    def score(self, texts: Sequence[str] | Iterable[str]) -> np.ndarray:
        featurize, logit, raw, to_p = self._fast._featurize, self._fast.logit, self.adapter.raw, self.adapter.to_p
        out = []
        for t in texts:
            terms, dense = featurize(_text(t))
            distinct = set(terms)
            out.append(to_p(raw(distinct, dense, logit(distinct, dense))))
        return np.array(out, dtype=np.float64)


def load(path: str | Path | None = None) -> Classifier:
    """Load the artifact folder (default: the committed one), refusing any
    type beyond scikit-learn's own and TRUSTED_TYPES."""
    sio = _import_skops_io()

    folder = Path(path) if path is not None else ARTIFACT_DIR
    if folder.is_file():
        folder = folder.parent
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"no classifier artifact at {model_path}: run `make train`")
    pipeline = sio.load(model_path, trusted=trusted_types(model_path))
    metadata = json.loads((folder / METADATA_FILE).read_text())
    prior = Classifier(pipeline, metadata)
    if not (folder / ADAPTER_FILE).is_file():
        return prior
    from .adapter import Adapter

    state = json.loads((folder / ADAPTER_FILE).read_text())
    return AdaptedClassifier(prior, Adapter.from_state(state["adapter"]), state.get("report", {}))


def write_adapted(prior: Classifier, prior_folder: str | Path | None, adapter, report: dict, out: str | Path) -> Path:
    """An artifact folder holding the prior (its files copied) and the
    adapter (ADAPTER_FILE, JSON), written to a scratch folder beside `out`
    and renamed into place, so a reader never sees half of it."""
    import os
    import shutil
    import tempfile

    source = Path(prior_folder) if prior_folder is not None else ARTIFACT_DIR
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for name in (MODEL_FILE, METADATA_FILE):
        shutil.copy2(source / name, scratch / name)
    (scratch / ADAPTER_FILE).write_text(json.dumps({"adapter": adapter.to_state(), "report": report}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(scratch, out)
    return out
