"""The routing policy: which tier answers, and why. Pure: no grpc, no vllm.

Like RouteLLM's routers, everything reduces to one number, p_complex, compared
with a threshold; the classifier behind it can change without touching this.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Mapping, Sequence

from .types import ChatMessage, Decision

log = logging.getLogger("triage.policy")

Scorer = Callable[[list[str]], Sequence[float]]


def question_text(messages: Sequence[ChatMessage]) -> str:
    """What the classifier sees: the last user message (the question being
    asked now), not system prompts or earlier turns."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content if messages else ""


class RoutingPolicy:
    def __init__(self, score: Scorer, threshold: float, models: Mapping[str, str], on_degraded: Callable[[], None] | None = None):
        self._score = score
        self.threshold = threshold
        self._models = models
        self._on_degraded = on_degraded or (lambda: None)

    def decide(self, messages: Sequence[ChatMessage], route: str | None = None, threshold: float | None = None) -> tuple[Decision, float]:
        """Return the decision and the classification time in milliseconds.

        A classifier failure is not a request failure: the request goes to
        the large tier, marked degraded (the safe side for answer quality).
        """
        threshold = self.threshold if threshold is None else threshold
        started = time.perf_counter()
        try:
            p = float(self._score([question_text(messages)])[0])
            if not math.isfinite(p):
                raise ValueError(f"classifier returned {p}")
        except Exception:
            log.exception("classifier failed; routing to the large tier")
            self._on_degraded()
            classify_ms = (time.perf_counter() - started) * 1e3
            tier = route or "large"
            return Decision(tier, self._models[tier], float("nan"), threshold, "fallback", degraded=True), classify_ms
        classify_ms = (time.perf_counter() - started) * 1e3
        if route is not None:
            return Decision(route, self._models[route], p, threshold, "override"), classify_ms
        tier = "large" if p >= threshold else "small"
        return Decision(tier, self._models[tier], p, threshold, "classifier"), classify_ms
