"""A per-tier circuit breaker: after `threshold` consecutive failures the
circuit opens and the tier is skipped; after `cooldown` one probe request is
let through (half-open); its success closes the circuit, its failure opens it
again. A probe that never reports back (its caller cancelled, a deadline)
gives way to a new probe after another cool-down, so the circuit cannot
stay half-open for ever.

"Consecutive" counts incidents, not victims: requests that were already
under way when a failure was counted, and then fail too, fell to the same
event (one worker of a gateway's pool killed under six streams fails all of
its streams at once) and add nothing. A request asks for `mark()` when it
starts and hands it back with its failure. Without this, one dead worker
behind a healthy gateway opened the whole tier for a cool-down, and every
request in it fell back.
"""

from __future__ import annotations

import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_s: float, clock=time.monotonic):
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self._clock = clock
        self.state = CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0
        self._counted = 0  # failures counted since the breaker was made: mark()'s clock

    def allow(self) -> bool:
        """May a request go to this tier now? (Claims the probe when half-open.)"""
        now = self._clock()
        if self.state == OPEN and now - self._opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self._probing = False
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and (not self._probing or now - self._probe_at >= self.cooldown_s):
            self._probing, self._probe_at = True, now
            return True
        return False

    def success(self) -> None:
        self.state, self.failures, self._probing = CLOSED, 0, False

    def mark(self) -> int:
        """A starting request's place in the failure history (for failure)."""
        return self._counted

    def failure(self, mark: int | None = None) -> bool:
        """A request failed. With the `mark` it took when it started: not
        counted if another failure was counted since (the same incident).
        True when counted (a new incident)."""
        if mark is not None and mark < self._counted:
            return False
        self._counted += 1
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.threshold:
            self.state, self._opened_at, self._probing = OPEN, self._clock(), False
        return True

    def trip(self) -> None:
        """Open now (the engine is known dead)."""
        self.failures = max(self.failures, self.threshold)
        self._counted += 1  # requests under way fall to the same event
        self.state, self._opened_at, self._probing = OPEN, self._clock(), False
