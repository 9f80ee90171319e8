"""How late the event loop runs what is due: the stall every request on it
shares (a long render on the loop, a garbage collection, a busy callback).

A timer is due every `interval` seconds; how late it fires is observed into
`router_event_loop_lag_seconds`. A quiet loop shows tens of microseconds.
"""

from __future__ import annotations

import asyncio
import time

INTERVAL_S = 0.1


async def watch_loop_lag(histogram, interval: float = INTERVAL_S) -> None:
    """Runs until cancelled."""
    while True:
        due = time.perf_counter() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, time.perf_counter() - due))
