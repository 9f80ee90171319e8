"""The routing policy: the score and the cut points in force. Pure: no
grpc, no vllm.

Like RouteLLM's routers, everything reduces to one number, p_complex. Tiers
are ordered cheapest first; ascending cut points split [0, 1] between them
(two tiers: one threshold). The classifier behind the number can change
without touching this. With a target share (adaptive.py) the cut points move
with the traffic. Which tier the score names is placement.py's rule, with
every other rule, in the order docs/routing.md lists them.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Sequence

from . import placement
from .adaptive import ShareController
from .conversation import conversation_score
from .sessions import SessionStore
from ..types import ChatMessage, Decision

log = logging.getLogger("triage.policy")

Scorer = Callable[[list[str]], Sequence[float]]


class RoutingPolicy:
    def __init__(self, score: Scorer, cut_points: Sequence[float], models: Sequence[tuple[str, str]], *,
                 on_degraded: Callable[[], None] | None = None, share: ShareController | None = None,
                 clock: Callable[[], float] = time.monotonic, conversation_turns: int = 1, sessions: SessionStore | None = None):
        """`models`: (tier, model) pairs, cheapest first; `cut_points`: one
        fewer, ascending (the configured ones). `share` watches the realised
        shares and, with a target, moves the live cut points.
        `conversation_turns`: user turns the score is carried along.
        `sessions`: the tier each conversation reached (rule 5; None: off)."""
        if len(cut_points) != len(models) - 1:
            raise ValueError(f"{len(models)} tiers need {len(models) - 1} cut points, got {len(cut_points)}")
        self._score = score
        self.cut_points = tuple(cut_points)
        self.tiers = tuple(name for name, _ in models)
        self._models = dict(models)
        self._on_degraded = on_degraded or (lambda: None)
        self.share = share or ShareController(self.tiers, None, self.cut_points)
        self._clock = clock
        self.conversation_turns = conversation_turns
        self.sessions = sessions
        self.shared_sessions = None  # sessions.SharedSessions, with a shared store (app.py)

    async def recall(self, session_id: str) -> None:
        """Before a request with a session id is decided: what the fleet knows of its conversation."""
        if self.shared_sessions is not None and session_id:
            await self.shared_sessions.recall(session_id)

    def use_scorer(self, score: Scorer) -> None:
        """Score with `score` from the next decision on (an adopted adapter,
        server/routing/adapting.py): one assignment, so a decision sees one or the
        other, never a mix."""
        self._score = score

    @property
    def threshold(self) -> float:
        """The configured cut into the most capable tier (with two tiers, the threshold)."""
        return self.cut_points[-1]

    @property
    def live_cuts(self) -> tuple[float, ...]:
        """The cut points in force now: the configured ones, or the target
        share's once it has moved them."""
        return self.share.cuts if self.share.active else self.cut_points

    def cuts_for(self, threshold: float | None) -> tuple[float, ...]:
        """A request's own threshold replaces the top cut; lower cuts never
        rise above it."""
        cuts = self.live_cuts
        if threshold is None:
            return cuts
        return (*(min(c, threshold) for c in cuts[:-1]), threshold)

    def decide(self, messages: Sequence[ChatMessage], route: str | None = None, threshold: float | None = None,
               record: bool = False, session_id: str = "") -> tuple[Decision, float]:
        """Return the decision and the classification time in milliseconds.
        `route` must name a tier (the caller checks). `record`: this decision
        routes a request, so it counts in the target share's window (a
        Classify call's does not). `session_id`: its conversation stays on
        the most capable tier it reached (rule 5, placement.by_session).

        A classifier failure is not a request failure: the request goes to
        the most capable tier, marked degraded (the safe side for quality).
        """
        cuts = self.cuts_for(threshold)
        started = time.perf_counter()
        try:
            p = conversation_score(messages, self._score, self.conversation_turns)
            if not math.isfinite(p):
                raise ValueError(f"classifier returned {p}")
        except Exception:
            log.exception("classifier failed; routing to the most capable tier")
            self._on_degraded()
            classify_ms = (time.perf_counter() - started) * 1e3
            tier = self.tiers[placement.unscored(self.tiers, route)]
            return Decision(tier, self._models[tier], float("nan"), cuts[-1], "fallback", degraded=True), classify_ms
        classify_ms = (time.perf_counter() - started) * 1e3
        rule = placement.by_score(p, cuts, self.tiers, route=route, own_threshold=threshold is not None, share_active=self.share.active)
        if record and rule.counts_in_window:
            self.share.record(p, rule.index, self._clock())
        index, reason = rule.index, rule.reason
        if self.sessions is not None and session_id:
            pinned = placement.by_session(index, reason, self.sessions.tier(session_id))
            if pinned is not None:
                self.sessions.placed()
                index, reason = pinned, "session"
        tier = self.tiers[index]
        return Decision(tier, self._models[tier], p, placement.bounding_cut(cuts, index), reason), classify_ms
