"""Writes that hold up nothing: the router's shadow outcomes, recent
answers and session tiers go into a bounded buffer on the event loop, and
one task writes them in order, a batch per transaction, in the store's own
threads. While the database is unreachable the batch waits and is tried
again (backing off to 2 s); when the buffer is full the oldest write is
dropped. Each is counted, by kind: `router_store_writes_total`,
`router_store_errors_total` (a failed attempt), `router_store_dropped_total`,
and the gauge `router_store_buffered`.

An outcome a client is told was recorded (Feedback) is not written here:
it is committed before the reply (`Store.call`), or refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .db import Store, StoreUnavailable, Transaction

log = logging.getLogger("triage.store")

KINDS = ("feedback", "shadow", "answer", "session", "adapter")  # the `kind` label: what was written or read
BATCH = 64  # writes per transaction
BACKOFF_S = (0.05, 2.0)  # first and longest wait before trying an unreachable store again

Write = Callable[[Transaction], None]


class StoreThreads:
    """The store's calls off the event loop, in threads of its own (as many
    as its connections), so a slow database never takes the default
    executor's threads from the engines and the cache."""

    def __init__(self, store: Store, threads: int = 4):
        self.store = store
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="store")

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class BufferedWrites:
    def __init__(self, threads: StoreThreads, capacity: int, metrics):
        """`metrics`: has store_writes, store_errors, store_dropped (counters
        labelled by kind) and store_buffered (a gauge)."""
        self.threads, self.capacity, self.metrics = threads, capacity, metrics
        self._pending: deque[tuple[str, Write, asyncio.Future]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, kind: str, write: Write) -> asyncio.Future:
        """Queue `write(tx)` (call on the event loop; returns at once). The
        future is True once it is committed, False if it was dropped: await
        it only where an order matters (a shadow counts its outcome after)."""
        if len(self._pending) >= self.capacity:
            self._give_up(self._pending.popleft())
        done = asyncio.get_running_loop().create_future()
        self._pending.append((kind, write, done))
        self.metrics.store_buffered.set(len(self._pending))
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="store-writes")
        return done

    def __len__(self) -> int:
        return len(self._pending)

    async def _drain(self) -> None:
        backoff = BACKOFF_S[0]
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                await self.threads.call(self._write, batch)
            except StoreUnavailable as exc:
                for kind in {k for k, _, _ in batch}:
                    self.metrics.store_errors.labels(kind).inc()
                log.warning("store writes held (%d buffered): %s", len(self._pending), exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])
                continue
            except Exception:  # a write the database refuses for its content would block every later one
                log.exception("store writes dropped: a batch of %d failed", len(batch))
                self._settle(batch, written=False)
                continue
            backoff = BACKOFF_S[0]
            self._settle(batch, written=True)

    def _settle(self, batch, written: bool) -> None:
        """The batch is written (or given up): off the buffer, counted.
        Writes dropped from the front meanwhile are no longer there."""
        for item in batch:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
                if written:
                    self.metrics.store_writes.labels(item[0]).inc()
                    item[2].set_result(True)
                else:
                    self._give_up(item)
        self.metrics.store_buffered.set(len(self._pending))

    def _give_up(self, item) -> None:
        kind, _, done = item
        self.metrics.store_dropped.labels(kind).inc()
        if not done.done():
            done.set_result(False)

    def _write(self, batch) -> None:
        with self.threads.store.transaction() as tx:
            for _, write, _ in batch:
                write(tx)

    async def flush(self, timeout: float | None = None) -> bool:
        """Until the buffer is empty (tests, shutdown); False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered (for at most `timeout`), then stop; what is
        left is counted as dropped and logged."""
        if not await self.flush(timeout) and self._pending:
            log.warning("store: %d buffered writes dropped at shutdown (database unreachable)", len(self._pending))
            while self._pending:
                self._give_up(self._pending.popleft())
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
