"""Stalls every request on the event loop shares, measured, and the one the
router can prevent.

- `watch_loop_lag`: a timer is due every `interval` seconds; how late it
  fires is observed into `router_event_loop_lag_seconds`. A quiet loop shows
  tens of microseconds; a long render on the loop, a busy callback or a
  garbage collection shows up here.
- `GcPauses`: every garbage collection's duration, by generation, into
  `router_gc_pause_seconds`, so a lag can be told apart from a collection.
- `freeze_heap` / `thaw_heap`: once the engines are loaded, everything alive is moved out
  of the collector's reach (`gc.freeze`), as vLLM's own server does after
  start-up. In process, torch and vLLM leave millions of long-lived objects,
  and each full collection walked all of them, with the loop stopped.
  Freezing also trims the allocator (`release_free_memory`), so an engine
  restart's freed memory leaves the router's RSS.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time

INTERVAL_S = 0.1


async def watch_loop_lag(histogram, interval: float = INTERVAL_S) -> None:
    """Runs until cancelled."""
    while True:
        due = time.perf_counter() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, time.perf_counter() - due))


class GcPauses:
    """Observes each collection's duration while installed (gc.callbacks)."""

    def __init__(self, histogram):
        self._by_generation = [histogram.labels(str(g)) for g in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def freeze_heap() -> int:
    """Collect what is garbage now, then exempt every surviving object from
    future collections, and hand the freed memory back to the system.
    Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    release_free_memory()
    return gc.get_freeze_count()


def release_free_memory() -> None:
    """glibc keeps freed memory in its arenas; loading an engine (in a
    worker thread, with its own arena) frees tens of megabytes that would
    otherwise stay in the router's RSS after every engine restart (15-35 MB
    a restart, measured; no Python object outlives a restart)."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)


def thaw_heap() -> None:
    """Undo freeze_heap once the engines have shut down, and collect: their
    objects are finalised now, while every module is still there, not at
    interpreter exit (vLLM's AsyncLLM.__del__ raising into the log)."""
    gc.unfreeze()
    gc.collect()
