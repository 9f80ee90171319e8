"""What a shared session costs a request: the time `RoutingPolicy.recall`
adds before a request with a session id is decided, with the store on a
real local PostgreSQL (its `sessions` table holding `--sessions` rows),
measured side by side in one run against the same call with no shared
store (this process's memory alone, the SQLite default). One caller at a
time, then `--concurrency` callers at once, as a busy router would ask.

    python -m benchmarks.session_lookup [--requests 3000] [--sessions 10000] [--concurrency 32] [--out DIR]

Needs a PostgreSQL server installed (`make test-deps`); it starts its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from .remote import _free_port

ROOT = Path(__file__).resolve().parents[1]


def _policy(shared):
    from server.routing.policy import RoutingPolicy
    from server.routing.sessions import SessionStore

    policy = RoutingPolicy(lambda texts: [0.2] * len(texts), [0.45], [("small", "S"), ("large", "L")], sessions=SessionStore(100_000, 1800))
    if shared is not None:
        policy.shared_sessions = shared(policy.sessions)
    return policy


async def _timed(policy, ids: list[str], concurrency: int) -> np.ndarray:
    """Each recall's own time, in microseconds, `concurrency` at a time."""
    out = np.empty(len(ids))
    queue = iter(enumerate(ids))

    async def caller():
        for i, session_id in queue:
            started = time.perf_counter()
            await policy.recall(session_id)
            out[i] = (time.perf_counter() - started) * 1e6

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return out


async def measure(url: str, requests: int, sessions: int, concurrency: int) -> dict:
    from server.observe.metrics import RouterMetrics
    from server.routing.sessions import SharedSessions
    from store import Store
    from store.writer import BufferedWrites, StoreThreads

    metrics = RouterMetrics(CollectorRegistry())
    threads = StoreThreads(Store(url, timeout_s=2.0))
    with threads.store.transaction() as tx:
        now = time.time()
        for i in range(sessions):
            tx.execute(SharedSessions.UPSERT, (f"s{i}", i % 2, now))
    writes = BufferedWrites(threads, 10_000, metrics)
    shared = _policy(lambda local: SharedSessions(local, writes, threads, 1.0, metrics))
    alone = _policy(None)
    rng = np.random.default_rng(0)
    ids = [f"s{int(i)}" for i in rng.integers(0, sessions * 2, requests)]  # half known, half new conversations
    report = {"requests": requests, "sessions_in_table": sessions, "concurrency": concurrency}
    for name, c in (("one_at_a_time", 1), ("concurrent", concurrency)):
        rounds = {"shared": [], "alone": []}
        for _ in range(3):  # alternated, so drift hits both alike
            rounds["alone"].append(await _timed(alone, ids, c))
            rounds["shared"].append(await _timed(shared, ids, c))
        for who, parts in rounds.items():
            us = np.concatenate(parts)
            report[f"{name}_{who}_us"] = {"p50": round(float(np.percentile(us, 50)), 1), "p99": round(float(np.percentile(us, 99)), 1)}
    errors = metrics.registry.get_sample_value("router_store_errors_total", {"kind": "session"})
    report["lookup_errors"] = errors
    await writes.close()
    threads.close()
    threads.store.close()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write session_lookup.json here")
    args = ap.parse_args()
    from tools.local_postgres import LocalPostgres

    pg = LocalPostgres(_free_port()).init().start()
    try:
        report = asyncio.run(measure(pg.url, args.requests, args.sessions, args.concurrency))
    finally:
        pg.remove()
    print(json.dumps(report, indent=2))
    for name in ("one_at_a_time", "concurrent"):
        s, a = report[f"{name}_shared_us"], report[f"{name}_alone_us"]
        print(f"{name}: shared session lookup adds p50 {s['p50'] - a['p50']:.0f} us, p99 {s['p99'] - a['p99']:.0f} us per request with a session id")
    if args.out:
        (args.out / "session_lookup.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
