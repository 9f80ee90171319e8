"""The adapter: where this deployment's cheap tier did not suffice, learned
from its own outcomes.

The prior (the artifact's logistic regression) scores kinds of question; it
cannot know which questions a given pair of models splits on. The feedback
store can: every shadow comparison (server/routing/shadow.py) and every Feedback
on a cheap-tier answer is one outcome "the cheap tier was enough, or not",
with the question's text when `feedback.keep_text` is on.

The adapter is a ridge regression of "the cheap tier failed" on
- the question's terms (the prior's binary TF-IDF analyzer, its own
  vocabulary fitted on the store's questions),
- the prior's dense features (length, quantities, steps, cues) and
- the prior's logit,
so one dot product over the terms the prior already extracted gives its raw
score. Ridge, not a classifier: it only ranks, and a ridge on 0/1 targets
ranks as well as a logistic regression here at a fraction of the fit time.

Its raw score becomes a probability by Platt scaling fitted to the
cross-validated predictions (never to the fit's own, which are
overconfident): p_complex is then what the prior's always meant, the
probability that the cheap tier does not suffice, now for this pair. The
threshold keeps its meaning; how many questions cross it follows from how
often this deployment's cheap tier fails (`calibrate --feedback` or
`routing.target_share` set how many instead).

`fit_and_gate` fits on the older three quarters of the outcomes and accepts
the adapter only when it ranks the newest quarter better than the prior
does (APGR with the cheap tier's outcome as the weak answer and the capable
tier as right: the share of failures caught, averaged over every share
sent up), in at least GATE_CONFIDENCE of paired bootstrap resamples of that
quarter, so that noise alone is seldom adopted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .evaluate import apgr
from .feedback import query_store, was_good
from .model import AdaptedClassifier, sigmoid, terms_dot

HOLDOUT_SHARE = 0.25  # the newest quarter checks what the older three quarters fitted
MIN_ROWS = 200  # outcomes with text, both parts together
MIN_FAILURES = 5  # of each outcome, in each part: a ranking needs both
# The ridge penalty, chosen by 3-fold cross-validation on the fitting part.
ALPHAS = (1.0, 3.0, 10.0, 30.0)
# The dense block (the prior's dense features and logit, standardised) is
# multiplied by this before the ridge: as penalised as one term. Choosing
# it by cross-validation too (0, 1 or 3) cost 0.008 of mean pair APGR over
# the stand-in deployments of benchmarks.adapter_floor (0.551 against 0.559
# fixed at 1; the terms alone 0.559, but 0.035 lower on TriviaQA, where the
# prior carries what the terms do not): on a few hundred outcomes the
# choice is mostly noise.
DENSE_WEIGHT = 1.0
GATE_CONFIDENCE = 0.8
BOOTSTRAP = 200


@dataclass(frozen=True)
class Outcomes:
    """The cheap tier's outcomes that kept their text, oldest first."""

    texts: list[str]
    failed: np.ndarray  # 1.0: the cheap tier did not suffice
    received_at: np.ndarray

    def part(self, idx) -> "Outcomes":
        return Outcomes([self.texts[i] for i in idx], self.failed[idx], self.received_at[idx])

    def split(self) -> tuple["Outcomes", "Outcomes"]:
        k = int(round(len(self.texts) * (1 - HOLDOUT_SHARE)))
        return self.part(np.arange(k)), self.part(np.arange(k, len(self.texts)))

    def __len__(self) -> int:
        return len(self.texts)


def read_store(path: str | Path, cheap_tier: str = "small", good_rating: int = 4) -> Outcomes:
    """The cheap tier's scored outcomes with text from a router's feedback
    store (shadow-up, shadow-down, Feedback's correct or rating), oldest
    first (feedback.query_store: read-only, a running router may be writing)."""
    rows = query_store(path, "SELECT received_at, rating, correct, question FROM feedback WHERE tier = ? AND question IS NOT NULL "
                             "AND question != '' AND (rating IS NOT NULL OR correct IS NOT NULL) ORDER BY received_at, request_id", (cheap_tier,))
    failed = [0.0 if was_good(rating, correct, good_rating) else 1.0 for _, rating, correct, _ in rows]
    return Outcomes([q for *_, q in rows], np.array(failed), np.array([r[0] for r in rows], dtype=np.float64))


def ranking(scores: np.ndarray, failed: np.ndarray) -> float:
    """APGR of `scores` at catching the cheap tier's failures (0.5: random)."""
    return apgr(scores, 1.0 - failed, np.ones_like(failed))


class Adapter:
    """A fitted adapter's parts, all plain numbers: the term weights (idf
    times coefficient, idf squared, as the prior's fast path), the dense
    and logit weights, and Platt's scale and offset."""

    def __init__(self, vocab: dict[str, tuple[float, float]], dense_w: list[float], logit_w: float, bias: float,
                 scale: float, offset: float):
        self.vocab, self.dense_w, self.logit_w, self.bias = vocab, dense_w, logit_w, bias
        self.scale, self.offset = scale, offset

    def raw(self, terms, dense, prior_logit: float) -> float:
        """The ridge's prediction for one text's distinct terms, dense
        features and prior logit."""
        return self.bias + self.logit_w * prior_logit + sum(map(float.__mul__, self.dense_w, dense)) + terms_dot(self.vocab, terms)

    def to_p(self, raw: float) -> float:
        """The raw score as the probability that the cheap tier fails."""
        return sigmoid(self.scale * raw + self.offset)

    def to_state(self) -> dict:
        """JSON-ready: the adapter is numbers only, so it is stored as JSON
        (no pickle, nothing to trust)."""
        return {"vocab": self.vocab, "dense_w": self.dense_w, "logit_w": self.logit_w, "bias": self.bias,
                "scale": self.scale, "offset": self.offset}

    @classmethod
    def from_state(cls, state: dict) -> "Adapter":
        vocab = {t: (float(w), float(q)) for t, (w, q) in state["vocab"].items()}
        return cls(vocab, [float(w) for w in state["dense_w"]], float(state["logit_w"]), float(state["bias"]),
                   float(state["scale"]), float(state["offset"]))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _design(prior, texts: list[str]):
    """(word block, scaled dense block, fitted word vectorizer, scaler,
    prior p): the terms' binary TF-IDF, and the dense features plus the
    prior's logit, standardised."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import StandardScaler

    from .features import featurize, terms

    feats = [featurize(t) for t in texts]
    p = prior.score(texts)
    dense = np.column_stack([np.array([f[1] for f in feats], dtype=np.float64), _logit(p)])
    word = TfidfVectorizer(analyzer=terms, min_df=2, binary=True, dtype=np.float64).fit(texts)
    scaler = StandardScaler().fit(dense)
    return word.transform(texts).tocsr(), scaler.transform(dense), word, scaler, p


def _stack(W, D, weight: float):
    import scipy.sparse as sp

    return sp.hstack([W, sp.csr_matrix(weight * D)]).tocsr()


def _choose(X, y) -> tuple[float, np.ndarray]:
    """The alpha with the best 3-fold ranking on the fitting part, and its
    out-of-fold predictions (what Platt scaling is fitted to)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    best, chosen = -1.0, (ALPHAS[1], np.zeros(len(y)))
    folds = list(KFold(3, shuffle=True, random_state=0).split(np.arange(len(y))))
    for alpha in ALPHAS:
        pred = np.empty(len(y))
        for tr, te in folds:
            pred[te] = Ridge(alpha=alpha).fit(X[tr], y[tr]).predict(X[te])
        value = ranking(pred, y)
        if value > best:
            best, chosen = value, (alpha, pred)
    return chosen


MIN_SCALE = 1e-3


def _platt(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt's (scale, offset) from out-of-fold predictions. On a few
    hundred noisy outcomes the fitted slope can come out at or below zero,
    which would reverse or flatten the ridge's order (0.02-0.04 of mean pair
    APGR lost on the small stand-in deployments of benchmarks.adapter_floor):
    the slope is kept at MIN_SCALE or above, so the order is always the
    ridge's and the probabilities sit near the failure rate."""
    from sklearn.linear_model import LogisticRegression

    scale = offset = 0.0
    if y.min() != y.max():  # one class only (every outcome a failure, or none): the failure rate alone
        platt = LogisticRegression(C=100.0).fit(pred[:, None], y)
        scale, offset = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    if scale < MIN_SCALE:
        rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        scale, offset = MIN_SCALE, math.log(rate / (1 - rate)) - MIN_SCALE * float(pred.mean())
    return scale, offset


def fit(prior, outcomes: Outcomes) -> tuple[Adapter, dict]:
    """An adapter fitted to `outcomes` (all of them), and how it was fitted."""
    from sklearn.linear_model import Ridge

    started = time.monotonic()
    W, D, word, scaler, p = _design(prior, outcomes.texts)
    y = outcomes.failed
    X = _stack(W, D, DENSE_WEIGHT)
    alpha, held_pred = _choose(X, y)
    ridge = Ridge(alpha=alpha).fit(X, y)
    n_word = len(word.vocabulary_)
    coef = ridge.coef_
    idf = word.idf_
    vocab = {t: (float(idf[j] * coef[j]), float(idf[j] * idf[j])) for t, j in word.vocabulary_.items() if coef[j] != 0.0}
    # Dense weights folded through the scaler: w · (x - mean) / scale.
    dense_coef = coef[n_word:] * DENSE_WEIGHT / scaler.scale_
    bias = float(ridge.intercept_) - float(dense_coef @ scaler.mean_)
    scale, offset = _platt(held_pred, y)
    adapter = Adapter(vocab, [float(w) for w in dense_coef[:-1]], float(dense_coef[-1]), bias, scale, offset)
    info = {"outcomes": len(outcomes), "failures": int(y.sum()), "alpha": alpha, "terms": len(vocab),
            "fit_seconds": round(time.monotonic() - started, 2)}
    return adapter, info


def _bootstrap_wins(ours: np.ndarray, theirs: np.ndarray, failed: np.ndarray) -> float:
    """The share of paired bootstrap resamples of the held-out outcomes on
    which `ours` ranks the failures better than `theirs`."""
    rng = np.random.default_rng(0)
    wins = 0
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(failed), len(failed))
        a, b = ranking(ours[idx], failed[idx]), ranking(theirs[idx], failed[idx])
        wins += a > b  # a resample with no failure gives NaN for both: not a win
    return wins / BOOTSTRAP


def fit_and_gate(prior, outcomes: Outcomes, min_rows: int = MIN_ROWS) -> tuple[Adapter | None, dict]:
    """Fit on the older three quarters, rank the newest quarter with the
    adapter and with the prior; then, if the adapter ranks it better, refit
    on all the outcomes and return that adapter. The report always says
    why (`adopted` and `refused_because`)."""
    older, newest = outcomes.split()
    report: dict = {"outcomes": len(outcomes), "fitted_on": len(older), "held_out": len(newest),
                    "failure_rate": float(outcomes.failed.mean()) if len(outcomes) else float("nan")}
    problem = None
    if len(outcomes) < min_rows:
        problem = f"{len(outcomes)} outcomes of the cheap tier with their text (at least {min_rows} needed)"
    elif min(older.failed.sum(), newest.failed.sum(), (1 - older.failed).sum(), (1 - newest.failed).sum()) < MIN_FAILURES:
        problem = f"too few failures or successes in a part (at least {MIN_FAILURES} of each in the fitted and the held-out part)"
    if problem is not None:
        return None, {**report, "adopted": False, "refused_because": problem}
    trial, _ = fit(prior, older)
    ours, theirs = AdaptedClassifier(prior, trial).score(newest.texts), prior.score(newest.texts)
    report["held_out_apgr"] = figures = {"adapter": ranking(ours, newest.failed), "prior": ranking(theirs, newest.failed),
                                         "length": ranking(np.array([len(t) for t in newest.texts], dtype=np.float64), newest.failed)}
    report["held_out_wins"] = wins = _bootstrap_wins(ours, theirs, newest.failed)
    if not (figures["adapter"] > figures["prior"] and wins >= GATE_CONFIDENCE):
        return None, {**report, "adopted": False,
                      "refused_because": f"on the newest {len(newest)} outcomes the adapter ranks the failures at APGR "
                                         f"{figures['adapter']:.3f}, the prior at {figures['prior']:.3f} (better in {wins:.0%} "
                                         f"of resamples; {GATE_CONFIDENCE:.0%} needed)"}
    adapter, info = fit(prior, outcomes)
    return adapter, {**report, **{"fit": info}, "adopted": True}
