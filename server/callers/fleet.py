"""The callers' counts across a fleet: with a shared store (PostgreSQL),
every `every_s` each process adds what its callers spent since the last
time to the store's `caller_usage` rows and reads the fleet's totals back
into its ledger's windows, so N replicas enforce one limit (to within what
the fleet spends in `every_s`). The store being away costs nothing but
that: the counts wait in the windows' `unsent` and go with the next sync,
and each process meanwhile counts what it sees.
"""

from __future__ import annotations

import asyncio
import logging

from store import StoreUnavailable

from .ledger import DAY, Ledger

log = logging.getLogger("triage.callers")

ADD = ("INSERT INTO caller_usage VALUES (?, ?, ?, ?) ON CONFLICT (caller, kind, window_start) "
       "DO UPDATE SET amount = caller_usage.amount + excluded.amount")
TOTALS = "SELECT caller, kind, window_start, amount FROM caller_usage WHERE window_start >= ?"
TRIM_EVERY = 600  # syncs between two deletions of rows older than two days
WINDOWS = {"requests": "requests", "tokens": "tokens", "cost": "spend"}  # a row's kind -> the Account's window


class FleetCounts:
    def __init__(self, ledger: Ledger, threads, every_s: float = 1.0):
        """`threads`: store.writer.StoreThreads on the shared store."""
        self.ledger, self.threads, self.every_s = ledger, threads, every_s
        self.syncs = 0
        self._task: asyncio.Task | None = None

    def windows(self):
        """(caller, kind, window) for every count the fleet shares."""
        for name, account in self.ledger.accounts.items():
            for kind, window in WINDOWS.items():
                yield name, kind, getattr(account, window)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:  # what this process spent since the last sync
            await self.sync()
        except StoreUnavailable:
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sync()
            except StoreUnavailable as exc:
                log.warning("callers' counts not shared this time: %s", exc)

    async def sync(self) -> None:
        """Send this process's counts, read the fleet's."""
        now = self.ledger.clock()
        sending = []
        for name, kind, window in self.windows():
            for start, amount in window.unsent.items():
                if amount:
                    sending.append((name, kind, start, amount))
            window.unsent.clear()
        since = int(now // DAY) * DAY - DAY  # the oldest window any limit still reads: yesterday's
        trim = self.syncs % TRIM_EVERY == 0
        try:
            rows = await self.threads.call(self._exchange, sending, since, trim)
        except BaseException:
            for name, kind, start, amount in sending:  # back, to go with the next sync
                window = self._window(name, kind)
                window.unsent[start] = window.unsent.get(start, 0.0) + amount
            raise
        self.syncs += 1
        for name, kind, start, total in rows:
            window = self._window(name, kind)
            if window is not None and start in (window.start(now), window.start(now) - window.span):
                # The fleet's total as of the sync, plus what this process counted since.
                window.counts[start] = total + window.unsent.get(start, 0.0)

    def _window(self, name: str, kind: str):
        account = self.ledger.accounts.get(name)
        return None if account is None else getattr(account, WINDOWS[kind])

    def _exchange(self, sending, since: int, trim: bool):
        store = self.threads.store
        with store.transaction() as tx:
            for row in sending:
                tx.execute(ADD, row)
            if trim:
                tx.execute("DELETE FROM caller_usage WHERE window_start < ?", (since - DAY,))
        return store.query(TOTALS, (since,))
