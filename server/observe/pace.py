"""Whether the event loop is saturated, and a place for streams to wait
while it is, so that their text goes out merged.

One loop serves every request: accepting a call, setting it up, and
relaying each token of every running answer. In a burst of new requests
the relays of the answers already running take the loop from the set-ups
waiting behind them, so every first token is late, and at a GPU's pace a
message a token costs more CPU than the tokens are worth. A stream that has
sent some text waits here while the loop is saturated; its engine's text
piles up meanwhile (the upstream connection's buffer, vLLM's output
collector) and goes out merged into one message when it resumes. Fewer
messages is less work per token, so the loop catches up and new requests'
first tokens go first. A stream's first text never waits, and while the
loop keeps up nothing waits: every token is its own message.

It looks only while two or more answers are being generated: one alone
has no one to make room for, so an idle router never merges, and a router
with nothing to do keeps no timer. Saturated: a tick of the loop's own
clock ran LATE_S late (work that became ready waited that long for the
loop), or over the last WINDOW_S the loop thread was on the CPU for most
of the time (`time.thread_time`, which counts the loop's work and nothing
else the process does: the engines' threads, gRPC's poller). Neither fires
on a loop keeping up with streams that step together: every running
request gets a token in the same engine step, so their relays reach the
loop in a clump of a few milliseconds and leave the rest of the step idle.
Busy from a saturated tick until a few quiet ticks in a row.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

TICK_S = 0.005  # how often the loop is looked at
LATE_S = 0.005  # a tick this late: work that became ready waited this long
WINDOW_S = 0.025  # over how long the loop's CPU share is measured
BUSY_SHARE = 0.85  # or the loop thread on the CPU for this share of the window
CALM_TICKS = 4  # busy until this many ticks in a row were not


class LoopPressure:
    """`busy`: the loop is saturated now. `calm()`: wait, at most
    `hold_s` (one wait shared by every stream that asks within it).
    `began()` and `ended()` around each answer's generation. Not started,
    or with `hold_s` 0, it is never busy."""

    def __init__(self, hold_s: float = 0.0, on_hold: Callable[[], None] = lambda: None):
        self.busy = False
        self.hold_s = hold_s
        self._on_hold = on_hold  # a stream waits (a metric)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answers = 0  # being generated now
        self._handle: asyncio.TimerHandle | None = None
        self._seen: collections.deque[tuple[float, float]] = collections.deque()  # (wall, loop CPU) of the window's ticks
        self._calm_ticks = 0  # ticks in a row that were not saturated
        self._held: asyncio.Future | None = None  # the one wait every held stream shares
        self._held_since = 0.0

    @property
    def watching(self) -> bool:
        """A tick is due: two or more answers are being generated."""
        return self._handle is not None

    def start(self) -> None:
        """On the running loop, from now on."""
        if self.hold_s > 0:
            self._loop = asyncio.get_running_loop()

    def stop(self) -> None:
        self._loop = None
        self._quiet()

    def began(self) -> None:
        """An answer's generation began (`ended()` when it ends, however)."""
        self._answers += 1
        if self._answers == 2 and self._loop is not None and self._handle is None:
            self._seen.clear()
            self._seen.append((time.perf_counter(), time.thread_time()))
            self._handle = self._loop.call_later(TICK_S, self._tick)

    def ended(self) -> None:
        self._answers -= 1  # the next tick stops looking below two

    async def calm(self) -> None:
        """Wait for the shared wait to end: at most `hold_s` from when its
        first stream asked. One future and no timer per stream, so a
        hundred held streams cost the loop one check a tick."""
        if self._held is None:
            self._held, self._held_since = self._loop.create_future(), time.perf_counter()
        self._on_hold()
        # shield: a held stream cancelled (its caller went away) must not end the others' wait
        await asyncio.shield(self._held)

    def _tick(self) -> None:
        if self._answers < 2 or self._loop is None:
            self._quiet()
            return
        now, cpu = time.perf_counter(), time.thread_time()
        seen = self._seen
        while len(seen) > 1 and now - seen[1][0] >= WINDOW_S:  # keep one sample at least a window old
            seen.popleft()
        then, cpu_then = seen[0]
        late = now - seen[-1][0] - TICK_S >= LATE_S
        saturated = late or (now - then >= WINDOW_S and cpu - cpu_then >= BUSY_SHARE * (now - then))
        seen.append((now, cpu))
        # A burst's loop is saturated in stretches with a quieter moment between them:
        # busy ends only after a run of quiet ticks, so streams keep merging through it.
        self._calm_ticks = 0 if saturated else self._calm_ticks + 1
        self.busy = saturated or (self.busy and self._calm_ticks < CALM_TICKS)
        if self._held is not None and now - self._held_since >= self.hold_s:
            self._release()
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def _quiet(self) -> None:
        """Not looking: not busy, no one held, no timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.busy = False
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None and not held.done():
            held.set_result(None)
