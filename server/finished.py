"""After an answer: one frozen record of the finished request, handed to
the listeners `app.py` lists in one place (metrics, stats, the log line,
tracing; then sessions, recent answers, shadows when they are on).

The router builds the record once, its usage priced first, and knows no
listener by name (vLLM's engine hands one stats record to its stat loggers
the same way). A listener that raises is logged and counted
(`router_listener_errors_total{listener}`) and never fails the request it
was told about: the answer is already the caller's. Adding an after-answer
feature is a function of a `Finished` and one line in `app.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .types import Decision, GenerateInput, Timings, Usage

log = logging.getLogger("triage.finished")


@dataclass(frozen=True)
class Finished:
    req: GenerateInput
    decision: Decision
    text: str
    usage: Usage  # priced (costs.answered)
    timings: Timings
    cache_status: str  # MISS, EXACT, SEMANTIC, BYPASS (cache.py)
    generated: bool  # an engine answered; False: a cached answer was replayed
    span: object  # the request's trace span, or None
    arrived: float  # perf_counter() instants
    done: float
    first_token_at: float | None


Listener = Callable[[Finished], None]


class Listeners:
    """Named listeners, called in order."""

    def __init__(self, listeners: Sequence[tuple[str, Listener]], errors=None):
        """`errors`: the counter a failing listener is counted in (labelled by its name)."""
        self.listeners = tuple(listeners)
        self._errors = errors
        if errors is not None:
            for name, _ in self.listeners:
                errors.labels(name)

    def __call__(self, finished: Finished) -> None:
        for name, listener in self.listeners:
            try:
                listener(finished)
            except Exception:
                log.exception("listener %s failed on request %s; the answer stands", name, finished.req.request_id)
                if self._errors is not None:
                    self._errors.labels(name).inc()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.listeners)
