"""What each caller may spend and what it has spent: requests and tokens a
minute (sliding windows), requests at once, and cost a UTC day. The one
owner of those counts: checked before a request does any work (`hold`),
an answer charged when it ends (`on_finished`, a listener of
server/finished.py), so a budget is checked against what is already spent.

With a shared store (PostgreSQL) the windows also hold the other processes'
counts (fleet.py), so N replicas enforce one limit; otherwise each process
counts its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import OTHER_CALLER, CallerConfig
from ..errors import ResourceExhausted

MINUTE, DAY = 60, 86_400
LIMITS = ("requests_per_minute", "tokens_per_minute", "concurrent", "budget_per_day")


class Window:
    """A count over the last `span` seconds, the usual sliding-window
    approximation: this fixed window's count plus the previous one's,
    weighted by how much of it the last `span` seconds still cover.
    `sliding=False`: this fixed window alone (a day's budget). Windows start
    at multiples of `span` on the wall clock, the same in every process."""

    def __init__(self, span: int, sliding: bool = True):
        self.span, self.sliding = span, sliding
        self.counts: dict[int, float] = {}  # window start -> amount (the fleet's, when shared)
        self.unsent: dict[int, float] = {}  # this process's amounts the fleet has not been told of (fleet.py)

    def start(self, now: float) -> int:
        return int(now // self.span) * self.span

    def add(self, amount: float, now: float) -> None:
        start = self.start(now)
        self.counts[start] = self.counts.get(start, 0.0) + amount
        self.unsent[start] = self.unsent.get(start, 0.0) + amount
        for counts in (self.counts, self.unsent):  # a window older than the previous one counts no more
            for old in [s for s in counts if s < start - self.span]:
                del counts[old]

    def count(self, now: float) -> float:
        start = self.start(now)
        current = self.counts.get(start, 0.0)
        if not self.sliding:
            return current
        return current + self.counts.get(start - self.span, 0.0) * (1 - (now - start) / self.span)

    def seconds_until_below(self, limit: float, now: float) -> float:
        """How long until the count is below `limit` again (nothing added meanwhile)."""
        start = self.start(now)
        current, previous = self.counts.get(start, 0.0), self.counts.get(start - self.span, 0.0)
        end = start + self.span
        if not self.sliding or current >= limit:
            # Past this window's end its count is the previous one, fading out.
            if not self.sliding or current <= 0:
                return end - now
            return end - now + self.span * (1 - limit / current) + 1e-3
        return max(0.0, start + self.span * (1 - (limit - current) / previous) - now) + 1e-3 if previous else 0.0


@dataclass
class Account:
    """One caller's limits, windows and totals since the start."""

    config: CallerConfig
    requests: Window = field(default_factory=lambda: Window(MINUTE))
    tokens: Window = field(default_factory=lambda: Window(MINUTE))
    spend: Window = field(default_factory=lambda: Window(DAY, sliding=False))
    in_flight: int = 0
    total_requests: int = 0
    total_tokens: int = 0
    total_cost: float = 0.0
    rejected: int = 0

    def over(self, now: float) -> tuple[str, float, float, float] | None:
        """The first limit the caller is at: (limit, its value, the count, seconds until room), or None."""
        c = self.config
        for limit, value, window in (("requests_per_minute", c.requests_per_minute, self.requests),
                                     ("tokens_per_minute", c.tokens_per_minute, self.tokens),
                                     ("budget_per_day", c.budget_per_day, self.spend)):
            if value is not None and (count := window.count(now)) >= value:
                return limit, value, count, window.seconds_until_below(value, now)
        if c.concurrent is not None and self.in_flight >= c.concurrent:
            return "concurrent", c.concurrent, self.in_flight, 1.0  # an answer ends in about that on a busy tier
        return None


class Ledger:
    def __init__(self, callers: Sequence[CallerConfig], metrics=None, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.accounts = {c.name: Account(c) for c in (*callers, CallerConfig(OTHER_CALLER))}
        self.weights = {name: a.config.weight for name, a in self.accounts.items()}
        self._metrics = metrics
        if metrics is not None:  # every caller's series from the start, at 0
            for name in self.accounts:
                for series in (metrics.caller_requests, metrics.caller_tokens, metrics.caller_cost):
                    series.labels(name)
                for limit in LIMITS:
                    metrics.caller_rejections.labels(name, limit)

    def account(self, caller: str) -> Account:
        return self.accounts.get(caller) or self.accounts[OTHER_CALLER]

    @contextlib.contextmanager
    def hold(self, caller: str):
        """The request counted against its caller's limits, for as long as
        it runs; RESOURCE_EXHAUSTED naming the limit when one is reached."""
        account, now = self.account(caller), self.clock()
        if (over := account.over(now)) is not None:
            self._refuse(account, *over)
        account.requests.add(1, now)
        account.total_requests += 1
        account.in_flight += 1
        if self._metrics is not None:
            self._metrics.caller_requests.labels(account.config.name).inc()
        try:
            yield account
        finally:
            account.in_flight -= 1

    def _refuse(self, account: Account, limit: str, value: float, count: float, wait_s: float):
        account.rejected += 1
        name = account.config.name
        if self._metrics is not None:
            self._metrics.caller_rejections.labels(name, limit).inc()
        wait_s = max(1.0, math.ceil(wait_s))
        raise ResourceExhausted(f"caller {name}: at its {limit} of {value:g} ({count:.4g} now); retry in {wait_s:.0f} s",
                                retry_after_ms=int(wait_s * 1000), scope="caller")

    def charge(self, caller: str, tokens: int, cost: float) -> None:
        account, now = self.account(caller), self.clock()
        account.tokens.add(tokens, now)
        account.spend.add(cost, now)
        account.total_tokens += tokens
        account.total_cost += cost
        if self._metrics is not None:
            name = account.config.name
            self._metrics.caller_tokens.labels(name).inc(tokens)
            self._metrics.caller_cost.labels(name).inc(cost)

    def on_finished(self, finished) -> None:
        """The listener: an answer is charged when it ends, cached ones
        included (their usage is priced as the cache prices it)."""
        u = finished.usage
        self.charge(finished.req.caller, u.prompt_tokens + u.completion_tokens, u.cost)

    def report(self) -> list[dict]:
        """Per caller, for GetStats."""
        now = self.clock()
        return [dict(caller=name, requests=a.total_requests, tokens=a.total_tokens, cost=a.total_cost, rejected=a.rejected,
                     in_flight=a.in_flight, spent_today=a.spend.count(now), requests_last_minute=a.requests.count(now),
                     tokens_last_minute=a.tokens.count(now))
                for name, a in self.accounts.items()]
