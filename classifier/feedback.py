"""Outcomes reported to a running router (the Feedback RPC, server/routing/feedback.py)
as evidence for the cut: `calibrate --feedback` moves it, holding out the
newest quarter of the outcomes and refusing a cut that does worse there
than the one in use. (Which questions go up is the adapter's business:
adapter.py reads the same store.)

What the outcomes can and cannot say. An outcome is observed only for the
tier that answered. A good or bad answer from the cheap tier says whether
the cheap tier was enough for that question: that is the evidence a cut
needs. An answer from the capable tier says nothing about whether the cheap
tier would have done as well, so those rows are counted but never used to
move the cut. The cheap tier's answers sit below the cut (plus whatever
spills, overrides and a target share sent there), so the cut can rise only
as far as such answers reach: no further than the evidence.

Shadow evaluation (routing.shadow, server/routing/shadow.py) supplies that evidence
above the cut: a capable tier's answer is asked again of the cheaper tier
and the two compared, stored as an outcome *of the cheaper tier* at the
request's score (label `shadow-down`; cheap answers shadowed upward are
`shadow-up`). So the same fit reads both directions: agreement above the
current cut lets it rise, disagreement below lets it fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOLDOUT_SHARE = 0.25  # the newest quarter of the outcomes checks what the older three quarters fitted
MIN_CHEAP_OUTCOMES = 100  # fewer of the cheap tier's outcomes than this in the fitting part: nothing to fit


@dataclass(frozen=True)
class Outcome:
    received_at: float
    tier: str
    p_complex: float
    threshold: float
    reason: str
    good: bool
    question: str | None


def query_store(url: str | Path, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows of `sql` on a router's store (`store.url`: sqlite:///path or
    postgresql://...; a bare path is an SQLite file), opened read-only (a
    running router may be writing to it); ValueError naming the problem
    when there is no store, it is not one, or it cannot be reached."""
    from store import Store, StoreUnavailable, as_url

    try:
        store = Store(as_url(url), readonly=True)
    except StoreUnavailable as exc:
        raise ValueError(str(exc)) from None
    try:
        return store.query(sql, params)
    except StoreUnavailable as exc:
        raise ValueError(str(exc)) from None
    finally:
        store.close()


def was_good(rating: int | None, correct: int | None, good_rating: int) -> bool:
    """correct/incorrect as it says; else a rating of `good_rating` or above."""
    return bool(correct) if correct is not None else rating >= good_rating


def read_outcomes(path: str | Path, good_rating: int = 4) -> list[Outcome]:
    """Every scored outcome in the store, oldest first."""
    rows = query_store(path, "SELECT received_at, tier, p_complex, threshold, reason, rating, correct, question FROM feedback "
                             "WHERE p_complex IS NOT NULL ORDER BY received_at")
    return [Outcome(at, tier, p, cut, reason, was_good(rating, correct, good_rating), question)
            for at, tier, p, cut, reason, rating, correct, question in rows]


def split(outcomes: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    """(older, newest): the newest HOLDOUT_SHARE are held out."""
    k = int(round(len(outcomes) * (1 - HOLDOUT_SHARE)))
    return outcomes[:k], outcomes[k:]


def failure_curve(outcomes: list[Outcome]):
    """The cheap tier's failure rate as a non-decreasing function of the
    score (isotonic regression): a harder-looking question never fails less
    often. Returns the fitted model."""
    from sklearn.isotonic import IsotonicRegression

    p = np.array([o.p_complex for o in outcomes])
    failed = np.array([not o.good for o in outcomes], dtype=float)
    return IsotonicRegression(increasing=True, out_of_bounds="clip").fit(p, failed)


def fit_cut(cheap: list[Outcome], max_failure: float, min_rows: int = MIN_CHEAP_OUTCOMES) -> tuple[float, str]:
    """The highest cut below which the cheap tier's fitted failure rate
    stays at or under `max_failure`, within the scores its outcomes cover;
    and why it stops there."""
    if len(cheap) < min_rows:
        raise ValueError(f"only {len(cheap)} outcomes of the cheap tier's answers to fit from (at least {min_rows} needed)")
    curve = failure_curve(cheap)
    scores = np.sort(np.unique([o.p_complex for o in cheap]))
    rates = curve.predict(scores)
    over = np.flatnonzero(rates > max_failure)
    if over.size:
        return float(scores[over[0]]), f"its failure rate passes {max_failure:g} at p_complex {scores[over[0]]:.3f}"
    return float(np.nextafter(scores[-1], np.inf)), f"its failure rate stays under {max_failure:g} up to its highest scored answer"


def failure_below(outcomes: list[Outcome], cut: float) -> tuple[float, int]:
    """The failure rate of the cheap tier's answers with scores below `cut`
    (the ones a router with that cut would still send there), and how many."""
    kept = [o for o in outcomes if o.p_complex < cut]
    return (sum(not o.good for o in kept) / len(kept) if kept else 0.0), len(kept)


def share_at_or_above(outcomes: list[Outcome], cut: float) -> float:
    return sum(o.p_complex >= cut for o in outcomes) / len(outcomes) if outcomes else 0.0


def calibrate(outcomes: list[Outcome], cheap_tier: str, current_cut: float, max_failure: float) -> dict:
    """Fit a cut on the older outcomes, check it on the newest, against the
    current cut. `accepted` is False (with the reason) when the new cut
    lets the cheap tier fail more often on the held-out answers than the
    current one does, beyond `max_failure`."""
    older, newest = split(outcomes)
    cheap_older = [o for o in older if o.tier == cheap_tier]
    cheap_newest = [o for o in newest if o.tier == cheap_tier]
    cut, why = fit_cut(cheap_older, max_failure)
    new_failure, new_n = failure_below(cheap_newest, cut)
    old_failure, old_n = failure_below(cheap_newest, current_cut)
    report = {
        "outcomes": len(outcomes), "cheap_tier": cheap_tier, "cheap_outcomes_fitted": len(cheap_older),
        "cheap_outcomes_held_out": len(cheap_newest), "max_failure": max_failure,
        "current_cut": current_cut, "new_cut": cut, "why": why,
        "held_out": {
            "current": {"cheap_failure_rate": old_failure, "cheap_answers_kept": old_n, "share_above_cut": share_at_or_above(newest, current_cut)},
            "new": {"cheap_failure_rate": new_failure, "cheap_answers_kept": new_n, "share_above_cut": share_at_or_above(newest, cut)},
        },
    }
    if not cheap_newest:
        report["accepted"], report["refused_because"] = False, "no held-out outcomes of the cheap tier to check the new cut on"
    elif new_failure > max(max_failure, old_failure):
        report["accepted"] = False
        report["refused_because"] = (f"on the held-out outcomes the cheap tier would fail {new_failure:.1%} of the answers the new cut "
                                     f"keeps there, against {old_failure:.1%} with the current cut (allowed: {max_failure:.0%})")
    else:
        report["accepted"] = True
    return report
