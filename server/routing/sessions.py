"""Session affinity: a conversation stays on the most capable tier it has
reached.

Without it, a short follow-up of a hard turn may score as simple and go to
the cheap tier, which answers without the large model's reasoning behind it
("multi-turn bouncing"). With a session id the router remembers, per
conversation, the highest tier that answered it (by the score, an override,
its own affinity or its length: not a spill under load or a fallback), and
places every later request there or higher, until the conversation has been
idle for `idle_seconds`.

Bounded by count (the least recently seen go first) and by age (an idle
session is forgotten when next seen, and the oldest are dropped as new ones
arrive). Every operation runs on the event loop without awaiting, so
concurrent requests never see a half-updated store.

With a shared store (PostgreSQL, `store.url`), `SharedSessions` makes the
memory the fleet's: a request with a session id first asks the store's
`sessions` table for the tier any process saw the conversation reach
(one indexed read, bounded by `store.session_timeout_s`; unreachable or
slow, the request is routed on this process's memory alone and counted),
and every tier reached is written there off the request path. The table
is bounded by age: rows idle longer than `idle_seconds` are deleted as it
is written.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from store import StoreUnavailable

from .placement import REACHES

EXPIRE_EVERY = 1000  # shared session writes between two deletions of idle rows


@dataclass
class _Session:
    tier: int  # index of the most capable tier the conversation reached, cheapest = 0
    seen: float  # when it was last seen (monotonic)


class SessionStore:
    def __init__(self, max_sessions: int, idle_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.max_sessions, self.idle_seconds, self._clock = max_sessions, idle_seconds, clock
        self._items: OrderedDict[str, _Session] = OrderedDict()  # least recently seen first
        self.pins = 0  # requests the affinity placed above their score's tier
        self.escalations = 0  # sessions moved up a tier
        self.expiries = 0  # sessions forgotten: idle, or pushed out by newer ones

    def __len__(self) -> int:
        return len(self._items)

    def tier(self, session_id: str) -> int | None:
        """The tier the conversation has reached, or None: unknown, or idle
        too long (then forgotten). Seeing it keeps it alive."""
        self._drop_idle()
        found = self._items.get(session_id)
        if found is None:
            return None
        found.seen = self._clock()
        self._items.move_to_end(session_id)
        return found.tier

    def listener(self, tier_names, shared: "SharedSessions | None" = None):
        """The listener (finished.py): a conversation's answer on a tier it
        reached (placement.REACHES: not a spill or a fallback) is
        remembered, in the shared store too when there is one."""
        def reached(finished) -> None:
            if finished.req.session_id and finished.decision.reason in REACHES:
                tier = tier_names.index(finished.decision.tier)
                self.reached(finished.req.session_id, tier)
                if shared is not None:
                    shared.remember(finished.req.session_id, tier)

        return reached

    def placed(self) -> None:
        """The affinity placed a request above its score's tier."""
        self.pins += 1

    def reached(self, session_id: str, tier: int) -> None:
        """The conversation was answered on `tier`: it stays there or higher."""
        now = self._clock()
        found = self._items.get(session_id)
        if found is None:
            self._add(session_id, tier, now)
            return
        if tier > found.tier:
            found.tier = tier
            self.escalations += 1
        found.seen = now
        self._items.move_to_end(session_id)

    def merge(self, session_id: str, tier: int) -> None:
        """Another process saw the conversation reach `tier` (SharedSessions)."""
        found = self._items.get(session_id)
        if found is None or tier > found.tier:
            self._add(session_id, tier, self._clock())

    def _add(self, session_id: str, tier: int, now: float) -> None:
        """(Re)placed as the most recently seen; the least recently seen go beyond max_sessions."""
        self._items[session_id] = _Session(tier, now)
        self._items.move_to_end(session_id)
        while len(self._items) > self.max_sessions:
            self._items.popitem(last=False)
            self.expiries += 1

    def _drop_idle(self) -> None:
        """The least recently seen first: stop at the first still alive."""
        limit = self._clock() - self.idle_seconds
        while self._items:
            first = next(iter(self._items.values()))
            if first.seen > limit:
                return
            self._items.popitem(last=False)
            self.expiries += 1


class SharedSessions:
    """The store's `sessions` table in front of this process's SessionStore."""

    UPSERT = ("INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
              "tier = CASE WHEN excluded.tier > sessions.tier THEN excluded.tier ELSE sessions.tier END, seen = excluded.seen")

    def __init__(self, local: SessionStore, writes, threads, timeout_s: float, metrics):
        """`writes`, `threads`: store.writer's BufferedWrites and StoreThreads."""
        self.local, self.writes, self.threads, self.timeout_s, self.metrics = local, writes, threads, timeout_s, metrics
        self._written = 0
        self._asked: dict[str, list[asyncio.Future]] = {}  # session id -> requests waiting for the next read
        self._reading: asyncio.Task | None = None

    async def recall(self, session_id: str) -> None:
        """Learn the tier the fleet saw the conversation reach, before it is
        routed. Requests that arrive while a read is in flight are answered
        together by the next one (one round trip for a burst, not one each)."""
        answer = asyncio.get_running_loop().create_future()
        self._asked.setdefault(session_id, []).append(answer)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read())
        try:
            tier = await asyncio.wait_for(answer, self.timeout_s)
        except (StoreUnavailable, asyncio.TimeoutError):
            self.metrics.store_errors.labels("session").inc()
            return
        if tier is not None:
            self.local.merge(session_id, tier)

    async def _read(self) -> None:
        while self._asked:
            asked, self._asked = self._asked, {}
            ids = list(asked)
            sql = f"SELECT session_id, tier FROM sessions WHERE seen >= ? AND session_id IN ({', '.join('?' * len(ids))})"
            try:
                rows = dict(await self.threads.call(self.threads.store.query, sql, (time.time() - self.local.idle_seconds, *ids)))
            except StoreUnavailable as exc:
                for waiting in asked.values():
                    for answer in waiting:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for session_id, waiting in asked.items():
                for answer in waiting:
                    if not answer.done():
                        answer.set_result(rows.get(session_id))

    def remember(self, session_id: str, tier: int) -> None:
        self._written += 1
        expire = self._written % EXPIRE_EVERY == 0
        idle = self.local.idle_seconds

        def write(tx) -> None:
            now = time.time()
            tx.execute(self.UPSERT, (session_id, tier, now))
            if expire:
                tx.execute("DELETE FROM sessions WHERE seen < ?", (now - idle,))

        self.writes.put("session", write)
