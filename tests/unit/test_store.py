"""The store (store/) on both dialects, against a real PostgreSQL: one
schema and its migrations, the statements the router runs, the fit lease,
and writes buffered while the database is away."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from prometheus_client import CollectorRegistry

from server.observe.metrics import RouterMetrics
from server.routing.feedback import Answered, FeedbackTable
from server.routing.sessions import SessionStore, SharedSessions
from store import NotAStore, Store, StoreUnavailable, redact
from store.schema import LATEST
from store.writer import BufferedWrites, StoreThreads

ANSWER = Answered("small", "S", 0.3, 0.45, "classifier", 1000.0, "What is 2 + 2?")
OLD_SCHEMA = """CREATE TABLE feedback (request_id TEXT PRIMARY KEY, received_at REAL NOT NULL, answered_at REAL NOT NULL,
    tier TEXT NOT NULL, model TEXT NOT NULL, p_complex REAL, threshold REAL NOT NULL, reason TEXT NOT NULL, rating INTEGER,
    correct INTEGER, label TEXT NOT NULL DEFAULT '', question TEXT)"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


def test_a_new_store_is_at_the_latest_schema_and_opening_it_again_changes_nothing(url):
    first = Store(url)
    first.execute("INSERT INTO sessions VALUES (?, ?, ?)", ("s", 1, 5.0))
    second = Store(url)  # a second process starting: no migration runs twice
    assert second.query("SELECT version FROM schema_version") == [(LATEST,)]
    assert second.query("SELECT session_id, tier FROM sessions") == [("s", 1)]
    first.close(), second.close()


def test_a_feedback_file_of_an_earlier_release_is_carried_forward(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO feedback VALUES ('r1', 1.0, 1.0, 'small', 'S', 0.2, 0.45, 'classifier', 4, NULL, '', NULL)")
    db.commit(), db.close()
    store = Store(f"sqlite:///{path}")
    assert store.query("SELECT version FROM schema_version") == [(LATEST,)]
    assert store.query("SELECT request_id, rating FROM feedback") == [("r1", 4)]
    assert store.query("SELECT COUNT(*) FROM adapters") == [(0,)]


def test_a_newer_schema_is_refused_and_bad_urls_are_named(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    store.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    store.close()
    with pytest.raises(RuntimeError, match=f"newer than this release's {LATEST}"):
        Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    with pytest.raises(NotAStore, match="sqlite:///path or postgresql://"):
        Store("mysql://u:secret@h/db")
    with pytest.raises(NotAStore, match="no such store"):
        Store(f"sqlite:///{tmp_path / 'missing.sqlite'}", readonly=True)
    (tmp_path / "other.sqlite").write_bytes(b"not a database " * 100)
    with pytest.raises(NotAStore, match="not a Triage store"):
        Store(f"sqlite:///{tmp_path / 'other.sqlite'}")
    assert redact("postgresql://triage:hunter2@db:5432/t") == "postgresql://triage:***@db:5432/t"


def test_outcomes_upsert_and_trim_alike_on_both(url):
    table = FeedbackTable(Store(url), max_rows=5, trim_every=10)
    table.record("a", ANSWER, 2, None, "")
    table.record("a", ANSWER, None, True, "fixed")  # the last one wins
    assert table.store.query("SELECT request_id, rating, correct, label, question FROM feedback") == [("a", None, 1, "fixed", "What is 2 + 2?")]
    for i in range(28):  # the 30th insert trims
        table.record(f"r{i:02d}", ANSWER, 3, None, "")
        time.sleep(0.001)  # distinct received_at
    assert table.count() == 5
    assert [r[0] for r in table.store.query("SELECT request_id FROM feedback ORDER BY request_id")] == [f"r{i}" for i in range(23, 28)]
    table.close()


def test_a_session_keeps_its_highest_tier_and_the_fit_lease_has_one_holder(url):
    store = Store(url)
    for tier in (1, 0, 2, 1):
        store.execute(SharedSessions.UPSERT, ("s", tier, time.time()))
    assert store.query("SELECT tier FROM sessions WHERE session_id = ?", ("s",)) == [(2,)]
    take = ("INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "until = excluded.until WHERE leases.until < ?")
    now = time.time()
    assert store.execute(take, ("fit", "a", now + 60, now)) == 1
    assert store.execute(take, ("fit", "b", now + 60, now)) == 0  # held
    assert store.execute(take, ("fit", "b", now + 200, now + 100)) == 1  # lapsed: taken over
    assert store.query("SELECT holder FROM leases") == [("b",)]


def test_writes_wait_while_postgresql_is_down_and_land_after(postgres_alone):
    """SIGKILL to the server with writes buffered: none is lost, the
    failed attempts are counted, and the buffer drains once it is back."""
    metrics = RouterMetrics(CollectorRegistry())
    store = Store(postgres_alone.url, timeout_s=0.5)
    threads = StoreThreads(store)
    table = FeedbackTable(store, 1000)

    def value(name, kind):
        return metrics.registry.get_sample_value(name, {"kind": kind})

    async def run():
        writes = BufferedWrites(threads, capacity=50, metrics=metrics)
        assert await writes.put("shadow", lambda tx: table.write(tx, "before", ANSWER, None, True, ""))
        postgres_alone.kill()
        pending = [writes.put("shadow", lambda tx, i=i: table.write(tx, f"w{i}", ANSWER, None, True, "")) for i in range(60)]
        await asyncio.sleep(1.0)
        assert not any(p.done() and p.result() for p in pending) and len(writes) == 50
        assert value("router_store_errors_total", "shadow") >= 1 and metrics.registry.get_sample_value("router_store_buffered") == 50
        postgres_alone.start()
        assert await writes.flush(30)
        results = [p.result() for p in pending]
        await writes.close()
        return results

    results = asyncio.run(run())
    assert results == [False] * 10 + [True] * 50  # the oldest ten went when the buffer was full
    stored = {r[0] for r in store.query("SELECT request_id FROM feedback")}
    assert stored == {"before"} | {f"w{i}" for i in range(10, 60)}
    assert value("router_store_writes_total", "shadow") == 51 and value("router_store_dropped_total", "shadow") == 10
    with pytest.raises(StoreUnavailable, match=r"postgresql://triage@127\.0\.0\.1"):
        postgres_alone.kill()
        store.query("SELECT 1")
    threads.close()
    store.close()


def test_a_shared_session_lookup_that_cannot_reach_the_store_routes_on_local_memory(postgres_alone):
    metrics = RouterMetrics(CollectorRegistry())
    threads = StoreThreads(Store(postgres_alone.url, timeout_s=0.5))
    local = SessionStore(100, 600)

    async def run():
        shared = SharedSessions(local, BufferedWrites(threads, 10, metrics), threads, 0.05, metrics)
        threads.store.execute(SharedSessions.UPSERT, ("other-process", 1, time.time()))
        await shared.recall("other-process")
        assert local.tier("other-process") == 1
        postgres_alone.kill()
        started = time.perf_counter()
        await shared.recall("unknown")
        return time.perf_counter() - started

    assert asyncio.run(run()) < 1.0 and local.tier("unknown") is None
    assert metrics.registry.get_sample_value("router_store_errors_total", {"kind": "session"}) == 1


def test_a_router_whose_store_cannot_be_reached_refuses_to_start_naming_it():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "server", "--config", "config/cpu.yaml", "--port", "0", "--metrics-port", "-1",
                          "--set", "store.url=postgresql://triage:hunter2@127.0.0.1:1/triage", "--set", "store.timeout_s=0.5"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "triage: store.url: postgresql://triage:***@127.0.0.1:1/triage: no connection within 0.5 s" in run.stderr
    assert "hunter2" not in run.stderr and "Traceback" not in run.stderr
