"""Admission control: a bounded number of requests generating and a bounded
queue in front of them. Beyond the queue, RESOURCE_EXHAUSTED at once with a
retry hint; never an unbounded wait.

Contended slots go to callers in turn, not first come (server/callers/):
each caller waits in its own line, and a freed slot goes to the caller
with waiting work whose weighted share would be the least after it
(stride scheduling: a caller's "pass" grows by 1/weight a slot, the
least pass + 1/weight goes next; an idle caller rejoins at the current
pass, banking nothing). So a caller that floods a
tier delays another's next request by about one slot's turnover, not by
the flood's length. `headroom` slots no one caller may hold, so a request
from someone else starts at once while one caller fills the tier. When the
queue is full, a newcomer whose caller waits less than the caller waiting
most takes that caller's newest place (which is refused instead). With one
caller (no callers configured) this is a plain first-come queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter, deque
from collections.abc import Mapping

from ..config import OTHER_CALLER
from ..errors import ResourceExhausted


class Gate:
    def __init__(self, name: str, max_in_flight: int, max_queued: int, retry_after_ms: int = 1000,
                 weights: Mapping[str, float] | None = None, headroom: int = 0):
        self.name = name
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.retry_after_ms = retry_after_ms
        self.weights = dict(weights or {})
        # Never all of a tier for one caller, but never nothing either.
        self.cap = max(1, max_in_flight - headroom) if weights else max_in_flight
        self.waiting = 0
        self.in_flight = 0
        self._lines: dict[str, deque[asyncio.Future]] = {}  # by caller, first come first within a caller
        self._held: Counter[str] = Counter()
        self._pass: dict[str, float] = {}
        self._now = 0.0  # the pass of the last slot handed out

    def has_room(self, caller: str = OTHER_CALLER) -> bool:
        """A request arriving now would get a slot without waiting."""
        return self.in_flight < self.max_in_flight and self._held[caller] < self.cap and not self._lines.get(caller)

    def ahead_of(self, caller: str) -> int:
        """About how many slots go to others before this caller's next
        request (its line and the others' in turn, by weight)."""
        own = len(self._lines.get(caller, ())) + 1
        weight = self._weight(caller)
        return own - 1 + sum(min(len(line), math.ceil(own * self._weight(c) / weight))
                             for c, line in self._lines.items() if c != caller)

    @contextlib.asynccontextmanager
    async def slot(self, caller: str = OTHER_CALLER):
        if not self.has_room(caller):
            await self._wait(caller)
        else:
            self._take(caller)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._held[caller] -= 1
            self._hand_out()

    async def _wait(self, caller: str) -> None:
        if self.waiting >= self.max_queued:
            self._make_room(caller)
        line = self._lines.setdefault(caller, deque())
        if not line and self._pass.get(caller, 0.0) < self._now:
            self._pass[caller] = self._now  # back from idle: no credit for the time away
        turn = asyncio.get_running_loop().create_future()
        line.append(turn)
        self.waiting += 1
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                # Handed a slot in the same moment it was cancelled: give it on.
                self.in_flight -= 1
                self._held[caller] -= 1
                self._hand_out()
            else:
                self._leave(caller, turn)
            raise

    def _make_room(self, caller: str) -> None:
        """The queue is full: the caller waiting most gives up its newest
        place if it waits more than this one; else this one is refused."""
        fattest = max(self._lines, key=lambda c: len(self._lines[c]), default=None)
        own = len(self._lines.get(caller, ()))
        refusal = ResourceExhausted(
            f"{self.name}: {self.max_in_flight} requests in flight and {self.max_queued} queued; retry later",
            retry_after_ms=self.retry_after_ms, scope=self.name,
        )
        if fattest is None or fattest == caller or len(self._lines[fattest]) <= own + 1:
            raise refusal
        turn = self._pop(fattest, newest=True)
        if turn is not None:
            turn.set_exception(refusal)

    def _take(self, caller: str) -> None:
        self.in_flight += 1
        self._held[caller] += 1
        self._pass[caller] = self._now = max(self._pass.get(caller, 0.0), self._now) + 1 / self._weight(caller)

    def _hand_out(self) -> None:
        """Free slots to waiting callers, least pass first."""
        while self.in_flight < self.max_in_flight:
            ready = [c for c, line in self._lines.items() if line and self._held[c] < self.cap]
            if not ready:
                return
            # The least virtual finish time: where the caller's pass would be after this slot.
            caller = min(ready, key=lambda c: self._pass.get(c, 0.0) + 1 / self._weight(c))
            turn = self._pop(caller)
            if turn is not None:
                self._take(caller)
                turn.set_result(None)

    def _pop(self, caller: str, newest: bool = False) -> asyncio.Future | None:
        """The caller's first (or newest) live place, taken out of its line.
        A place whose task was cancelled is dropped on the way: its future
        is done before the task runs again to leave the line itself."""
        line = self._lines[caller]
        while line:
            turn = line.pop() if newest else line.popleft()
            self.waiting -= 1
            if not turn.done():
                self._forget(caller)
                return turn
        self._forget(caller)
        return None

    def _leave(self, caller: str, turn: asyncio.Future) -> None:
        line = self._lines.get(caller)
        if line is not None and turn in line:
            line.remove(turn)
            self.waiting -= 1
            self._forget(caller)

    def _forget(self, caller: str) -> None:
        if not self._lines.get(caller, True):
            del self._lines[caller]

    def _weight(self, caller: str) -> float:
        return self.weights.get(caller, 1.0)
