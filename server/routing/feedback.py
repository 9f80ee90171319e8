"""Outcomes of answers, for re-fitting the routing.

- `RecentAnswers`: the router's memory of what it answered lately (request
  id -> score, tier, model, rule), bounded by count and age, so feedback is
  taken only for answers it really gave, and is stored with the score they
  were routed on. With a shared store (PostgreSQL) every answer is also
  written to its `answers` table (buffered, off the request path), so a
  Feedback that reaches another worker or replica finds it there.
- `FeedbackTable`: the store's `feedback` table (store/schema.py). An
  outcome a client is told was recorded is committed first (SQLite's
  synchronous=FULL in WAL mode; PostgreSQL's commit); while the database
  cannot take it, Feedback answers UNAVAILABLE and nothing is
  acknowledged. Bounded by rows (trimmed every TRIM_EVERY inserts), the
  oldest first. The question's text is stored only with `feedback.keep_text`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from store import Store, StoreUnavailable, as_url

from ..errors import InvalidArgument, NotFound, Unavailable
from ..types import question_text

MAX_LABEL_CHARS = 200
TRIM_EVERY = 1000  # inserts between two trims to max_rows: the table holds at most max_rows + TRIM_EVERY


def check_feedback(request_id: str, rating: int | None, correct: bool | None, label: str) -> None:
    """A Feedback request's own values (whether the answer exists is the store's question)."""
    if not request_id:
        raise InvalidArgument("request_id", "required: the id of the answer this is about")
    if rating is None and correct is None:
        raise InvalidArgument("outcome", "set rating (1 to 5) or correct")
    if rating is not None and not 1 <= rating <= 5:
        raise InvalidArgument("rating", f"must be 1 to 5, got {rating}")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument("label", f"at most {MAX_LABEL_CHARS} characters, got {len(label)}")


@dataclass(frozen=True)
class Answered:
    """What the router remembers of one answer."""

    tier: str
    model: str
    p_complex: float  # NaN: the classifier failed
    threshold: float
    reason: str
    at: float  # unix time
    question: str | None = None  # only kept with feedback.keep_text
    caller: str = ""  # who asked (server/callers/identity.py)


class RecentAnswers:
    """The last `max_entries` answers, none older than `max_age_s`."""

    def __init__(self, max_entries: int, max_age_s: float, clock=time.time):
        self.max_entries, self.max_age_s, self._clock = max_entries, max_age_s, clock
        self._items: OrderedDict[str, Answered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, request_id: str, answered: Answered) -> None:
        self._items[request_id] = answered
        self._items.move_to_end(request_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def listener(self, keep_text: bool, shared: "SharedAnswers | None" = None):
        """The listener (finished.py): every answer is remembered, for the
        Feedback RPC; its question's text only with `keep_text`; in the
        shared store too, when there is one."""
        def remember(finished) -> None:
            d = finished.decision
            answered = Answered(d.tier, d.model, d.p_complex, d.threshold, d.reason, time.time(),
                                question_text(finished.req.messages) if keep_text else None, finished.req.caller)
            self.remember(finished.req.request_id, answered)
            if shared is not None:
                shared.remember(finished.req.request_id, answered)

        return remember

    def get(self, request_id: str) -> Answered | None:
        found = self._items.get(request_id)
        if found is None or self._clock() - found.at > self.max_age_s:
            return None
        return found


class FeedbackTable:
    """The `feedback` table's writes; safe from the store's threads."""

    UPSERT = ("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET "
              + ", ".join(f"{c} = excluded.{c}" for c in ("received_at", "answered_at", "tier", "model", "p_complex", "threshold",
                                                          "reason", "rating", "correct", "label", "question", "caller")))
    # Keeps the newest max_rows (received_at ties aside); nothing when there are fewer.
    TRIM = "DELETE FROM feedback WHERE received_at < (SELECT received_at FROM feedback ORDER BY received_at DESC LIMIT 1 OFFSET ?)"

    def __init__(self, store: Store, max_rows: int, trim_every: int = TRIM_EVERY):
        self.store, self.max_rows, self.trim_every = store, max_rows, trim_every
        self._inserts = 0

    @classmethod
    def open(cls, url: str | Path, max_rows: int, trim_every: int = TRIM_EVERY) -> "FeedbackTable":
        """On its own store (tools, tests): a URL, or a bare path for an SQLite file."""
        return cls(Store(as_url(url)), max_rows, trim_every)

    def close(self) -> None:
        self.store.close()

    def write(self, tx, request_id: str, answered: Answered, rating: int | None, correct: bool | None, label: str) -> None:
        """One outcome (the last one wins for a request id), in `tx`."""
        tx.execute(self.UPSERT, (request_id, time.time(), answered.at, answered.tier, answered.model,
                                 None if answered.p_complex != answered.p_complex else answered.p_complex, answered.threshold,
                                 answered.reason, rating, None if correct is None else int(correct), label, answered.question,
                                 answered.caller))
        self._inserts += 1
        if self._inserts % self.trim_every == 0:
            tx.execute(self.TRIM, (self.max_rows - 1,))

    def record(self, request_id: str, answered: Answered, rating: int | None, correct: bool | None, label: str) -> None:
        """Commit one outcome; returns only once it is durable."""
        with self.store.transaction() as tx:
            self.write(tx, request_id, answered, rating, correct, label)

    def count(self) -> int:
        return self.store.query("SELECT COUNT(*) FROM feedback")[0][0]


class SharedAnswers:
    """The store's `answers` table: every process's recent answers, for a
    Feedback that reaches another one. Trimmed by age as it is written."""

    UPSERT = ("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET "
              "answered_at = excluded.answered_at, tier = excluded.tier, model = excluded.model, p_complex = excluded.p_complex, "
              "threshold = excluded.threshold, reason = excluded.reason, question = excluded.question, caller = excluded.caller")

    def __init__(self, writes, threads, max_age_s: float):
        """`writes`: store.writer.BufferedWrites; `threads`: its StoreThreads."""
        self.writes, self.threads, self.max_age_s = writes, threads, max_age_s
        self._written = 0

    def remember(self, request_id: str, a: Answered) -> None:
        row = (request_id, a.at, a.tier, a.model, None if a.p_complex != a.p_complex else a.p_complex, a.threshold, a.reason, a.question,
               a.caller)
        self._written += 1
        expire = self._written % TRIM_EVERY == 0

        def write(tx) -> None:
            tx.execute(self.UPSERT, row)
            if expire:
                tx.execute("DELETE FROM answers WHERE answered_at < ?", (time.time() - self.max_age_s,))

        self.writes.put("answer", write)

    async def find(self, request_id: str) -> Answered | None:
        rows = await self.threads.call(self.threads.store.query, "SELECT tier, model, p_complex, threshold, reason, answered_at, question, caller "
                                       "FROM answers WHERE request_id = ? AND answered_at >= ?", (request_id, time.time() - self.max_age_s))
        if not rows:
            return None
        tier, model, p, cut, reason, at, question, caller = rows[0]
        return Answered(tier, model, float("nan") if p is None else p, cut, reason, at, question, caller)


class Outcomes:
    """What the Feedback RPC does once its values are checked: find the
    answer among the recent ones (this process's, else the shared store's),
    commit the outcome, count it."""

    def __init__(self, table: FeedbackTable, recent: RecentAnswers, threads, metrics, timeout_s: float,
                 shared: SharedAnswers | None = None, on_recorded=None):
        self.table, self.recent, self.threads, self._metrics, self.timeout_s = table, recent, threads, metrics, timeout_s
        self.shared = shared
        self._on_recorded = on_recorded or (lambda tier: None)  # e.g. the GetStats counts

    async def record(self, request_id: str, rating: int | None, correct: bool | None, label: str) -> Answered:
        answered = self.recent.get(request_id) or await self._find_shared(request_id)
        if answered is None:
            raise NotFound(f"request_id: no answer with id {request_id!r} among this server's recent ones")
        try:  # committed (and on disk) before the caller hears OK
            await asyncio.wait_for(self.threads.call(self.table.record, request_id, answered, rating, correct, label), self.timeout_s)
        except (StoreUnavailable, asyncio.TimeoutError) as exc:
            self._metrics.store_errors.labels("feedback").inc()
            raise Unavailable(f"feedback: the store cannot take the outcome now, nothing was recorded; try again "
                              f"({exc or f'no commit within {self.timeout_s:g} s'})") from None
        self._metrics.store_writes.labels("feedback").inc()
        result = f"rating_{rating}" if rating is not None else ("correct" if correct else "incorrect")
        self._metrics.feedback.labels(answered.tier, result).inc()
        self._on_recorded(answered.tier)
        return answered

    async def _find_shared(self, request_id: str) -> Answered | None:
        if self.shared is None:
            return None
        try:
            return await asyncio.wait_for(self.shared.find(request_id), self.timeout_s)
        except (StoreUnavailable, asyncio.TimeoutError) as exc:
            self._metrics.store_errors.labels("answer").inc()
            raise Unavailable(f"feedback: the store cannot be asked for answer {request_id!r} now; try again ({exc or 'timed out'})") from None
