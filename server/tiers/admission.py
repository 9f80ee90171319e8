"""Admission control: a bounded number of requests generating and a bounded
queue in front of them. Beyond the queue, RESOURCE_EXHAUSTED at once with a
retry hint; never an unbounded wait."""

from __future__ import annotations

import asyncio
import contextlib

from ..errors import ResourceExhausted


class Gate:
    def __init__(self, name: str, max_in_flight: int, max_queued: int, retry_after_ms: int = 1000):
        self.name = name
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.retry_after_ms = retry_after_ms
        self._slots = asyncio.Semaphore(max_in_flight)
        self.waiting = 0
        self.in_flight = 0

    def has_room(self) -> bool:
        """A request arriving now would get a slot without waiting."""
        return self.in_flight < self.max_in_flight and self.waiting == 0

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._slots.locked() and self.waiting >= self.max_queued:
            raise ResourceExhausted(
                f"{self.name}: {self.max_in_flight} requests in flight and {self.max_queued} queued; retry later",
                retry_after_ms=self.retry_after_ms, scope=self.name,
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()
