"""Outcomes of answers, for re-fitting the routing.

- `RecentAnswers`: the router's memory of what it answered lately (request
  id -> score, tier, model, rule), bounded by count and age, so feedback is
  taken only for answers it really gave, and is stored with the score they
  were routed on.
- `FeedbackStore`: an SQLite file (standard library). Every accepted outcome
  is committed, with synchronous=FULL in WAL mode, before the RPC returns:
  what a client saw acknowledged survives a kill -9 or a power cut. Bounded
  by rows (checked every TRIM_EVERY inserts); the oldest go first. The
  question's text is stored only when the deployment turns
  `feedback.keep_text` on.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import InvalidArgument, NotFound
from ..types import question_text

MAX_LABEL_CHARS = 200
# The `result` label of router_feedback_total.
TRIM_EVERY = 1000  # inserts between two trims to max_rows: the table holds at most max_rows + TRIM_EVERY

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,      -- unix time the outcome arrived
    answered_at REAL NOT NULL,      -- unix time the answer was given
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    p_complex REAL,                 -- NULL when the classifier had failed
    threshold REAL NOT NULL,        -- the cut the score was held to
    reason TEXT NOT NULL,           -- the rule that decided: classifier, override, fallback, ...
    rating INTEGER,                 -- 1..5, or NULL
    correct INTEGER,                -- 1 / 0, or NULL
    label TEXT NOT NULL DEFAULT '',
    question TEXT                   -- only with feedback.keep_text
)
"""


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

    def listener(self, keep_text: bool):
        """The listener (finished.py): every answer is remembered, for the
        Feedback RPC; its question's text only with `keep_text`."""
        def remember(finished) -> None:
            d = finished.decision
            self.remember(finished.req.request_id, Answered(d.tier, d.model, d.p_complex, d.threshold, d.reason, time.time(),
                                                            question_text(finished.req.messages) if keep_text else None))

        return remember

    def get(self, request_id: str) -> Answered | None:
        found = self._items.get(request_id)
        if found is None or self._clock() - found.at > self.max_age_s:
            return None
        return found


class FeedbackStore:
    """One SQLite file; safe to call from worker threads (one connection, a lock)."""

    def __init__(self, path: str, max_rows: int, trim_every: int = TRIM_EVERY):
        self.path, self.max_rows, self.trim_every = path, max_rows, trim_every
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
        self._db.execute(SCHEMA)
        self._inserts = 0

    def record(self, request_id: str, answered: Answered, rating: int | None, correct: bool | None, label: str) -> None:
        """Commit one outcome (the last one wins for a request id). Returns
        only once it is durable."""
        row = (request_id, time.time(), answered.at, answered.tier, answered.model,
               None if answered.p_complex != answered.p_complex else answered.p_complex, answered.threshold, answered.reason,
               rating, None if correct is None else int(correct), label, answered.question)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._inserts += 1
            if self._inserts % self.trim_every == 0:
                self._trim()

    def _trim(self) -> None:
        self._db.execute("DELETE FROM feedback WHERE rowid IN (SELECT rowid FROM feedback ORDER BY received_at DESC LIMIT -1 OFFSET ?)",
                         (self.max_rows,))

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Outcomes:
    """What the Feedback RPC does once its values are checked: find the
    answer among the recent ones, commit the outcome, count it."""

    def __init__(self, store: FeedbackStore, recent: RecentAnswers, metrics, on_recorded=None):
        self.store, self.recent, self._metrics = store, recent, metrics
        self._on_recorded = on_recorded or (lambda tier: None)  # e.g. the GetStats counts

    async def record(self, request_id: str, rating: int | None, correct: bool | None, label: str) -> Answered:
        answered = self.recent.get(request_id)
        if answered is None:
            raise NotFound(f"request_id: no answer with id {request_id!r} among this server's recent ones")
        # Committed (and on disk) before the caller hears OK.
        await asyncio.to_thread(self.store.record, request_id, answered, rating, correct, label)
        result = f"rating_{rating}" if rating is not None else ("correct" if correct else "incorrect")
        self._metrics.feedback.labels(answered.tier, result).inc()
        self._on_recorded(answered.tier)
        return answered
