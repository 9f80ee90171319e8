"""One fleet, one memory: two router replicas share a real PostgreSQL
(store.url), one of them with two worker processes on one port, all in
front of one real `vllm serve` of the CPU build (remote tiers). Tests run
in file order: outcomes, sessions, the adapter, then PostgreSQL killed
under load, then the stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from clients import TriageClient
from clients.errors import UnavailableError
from store import Store
from tests.unit.test_adapter import fill
from tools.local_postgres import LocalPostgres

from .conftest import ROOT, RemoteVllm, _test_config, free_port, start_server, stop_server, wait_for
from .test_workers import _free_pair, _fresh_client, _ready, _serving, _workers

WORKERS = 2
POLL_S = 1.0  # routing.adapt.poll_s
LEADER = "Who is the prime minister of Peru?"  # the kind the seeded outcomes say the cheap tier fails


def _metric(port: int, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    pg = LocalPostgres(free_port()).init().start()
    fill(pg.url, 600)  # outcomes an earlier fleet stored: leaders fail on the cheap tier
    upstream = RemoteVllm(tmp / "a" / "SmolLM2-135M-Instruct", free_port(), tmp / "vllm-serve.log")  # the folder _test_config makes
    remote = {"backend": "remote", "replicas": [upstream.url], "engine_args": {}}
    shared = dict(tiers={"small": remote, "large": remote}, retrieval={"index": None}, store={"url": pg.url, "timeout_s": 2.0},
                  feedback={"keep_text": True})

    def adapt(folder):  # each replica its own folder, as two hosts would have
        return {"adapt": {"enabled": True, "every": 2, "min_outcomes": 20, "poll_s": POLL_S, "dir": str(folder)}}

    port, metrics = free_port(), _free_pair()
    (tmp / "a").mkdir(), (tmp / "b").mkdir()
    config_a = _test_config(tmp / "a", **shared, routing=adapt(tmp / "a" / "adapters"),
                            server={"workers": WORKERS, "port": port, "metrics_port": metrics, "http_port": -1})
    config_b = _test_config(tmp / "b", **shared, routing=adapt(tmp / "b" / "adapters"))
    upstream.start()
    log = (tmp / "router-a.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(config_a)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    b = None
    try:
        assert re.search(rf"triage: {WORKERS} workers on [\d.]+:{port}", proc.stdout.readline())
        upstream.wait_healthy()
        b = start_server(config_b, tmp / "b")
        probe = TriageClient(f"127.0.0.1:{port}", timeout=30)
        wait_for(lambda: _serving(probe) and all(_ready(metrics + i) for i in range(WORKERS)), 420, "every worker ready")
        probe.close()
        yield {"a": f"127.0.0.1:{port}", "a_metrics": [metrics + i for i in range(WORKERS)], "b": b, "pg": pg, "proc": proc,
               "log_a": tmp / "router-a.log"}
    finally:
        if proc.poll() is None:
            for pid in _workers(proc):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        if b is not None and b.process.poll() is None:
            b.process.kill()
        upstream.stop()
        pg.remove()


def _query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    store = Store(url)
    try:
        return store.query(sql, params)
    finally:
        store.close()


def _metric_ports(fleet) -> list[int]:
    return [*fleet["a_metrics"], fleet["b"].metrics_port]


def _ask(address: str, question: str, **kwargs):
    client = _fresh_client(address)
    try:
        return client.generate(question, cache="off", max_tokens=4, **kwargs)
    finally:
        client.close()


def _feedback(address: str, request_id: str, **outcome):
    client = _fresh_client(address)
    try:
        return client.feedback(request_id, **outcome)
    finally:
        client.close()


def test_feedback_through_any_process_lands_in_one_table(fleet):
    """Each answer's outcome is sent on a new connection, to the other
    replica or to whichever worker the kernel picks: the process that takes
    it finds the answer in the shared store when it did not give it."""
    answers = [_ask(fleet["a"], f"Name a colour, number {i}.", route="large") for i in range(6)]
    answers += [_ask(fleet["b"].address, f"Name a fruit, number {i}.", route="large") for i in range(3)]
    time.sleep(0.5)  # the answers' rows are written off the request path
    for i, answer in enumerate(answers):
        to = fleet["b"].address if i < 6 else fleet["a"]  # always another process than the one that answered, for 6 of them
        assert _feedback(to, answer.request_id, rating=4).tier_name == "large"
    rows = _query(fleet["pg"].url, "SELECT request_id, tier, rating FROM feedback WHERE rating = 4")
    assert sorted(rows) == sorted((a.request_id, "large", 4) for a in answers)


def test_a_follow_up_on_a_new_connection_to_another_process_keeps_its_session(fleet):
    first = _ask(fleet["a"], "Explain the proof of Fermat's little theorem.", route="large", session_id="conv-1")
    assert first.decision.tier_name == "large"
    time.sleep(0.5)
    alone = _ask(fleet["b"].address, "Thanks!", session_id="conv-2")  # a conversation that never went up
    assert alone.decision.tier_name == "small"
    for address in (fleet["b"].address, fleet["a"], fleet["a"]):
        follow_up = _ask(address, "Thanks!", session_id="conv-1")
        assert (follow_up.decision.tier_name, follow_up.decision.reason) == ("large", "session"), address


def test_an_adapter_adopted_by_one_process_routes_every_process_and_one_fits_at_a_time(fleet):
    b, url = fleet["b"], fleet["pg"].url
    prior = b.client.classify(LEADER).decision.p_complex
    _query(url, "INSERT INTO leases VALUES ('adapter-fit', 'elsewhere:1', ?) RETURNING name", (time.time() + 600,))
    for _ in range(2):  # `every` cheap-tier outcomes on b: its turn to fit, but the lease is held
        answer = b.client.generate("Name a bird.", route="small", cache="off", max_tokens=4)
        b.client.feedback(answer.request_id, correct=True)
    wait_for(lambda: "another process holds the adapter-fit lease" in b.log(), 30, "b to skip its fit")
    assert sum(_metric(p, "router_adapter_fits_total", result=r) for p in _metric_ports(fleet) for r in ("adopted", "refused", "failed")) == 0

    _query(url, "DELETE FROM leases RETURNING name")
    for _ in range(2):
        answer = b.client.generate("Name a tree.", route="small", cache="off", max_tokens=4)
        b.client.feedback(answer.request_id, correct=True)
    wait_for(lambda: _metric(b.metrics_port, "router_adapter_fits_total", result="adopted") == 1, 180, "b's fit adopted")
    adopted = b.client.stats().adapter
    assert adopted.current == "gen-0001" and b.client.classify(LEADER).decision.p_complex > prior + 0.3
    time.sleep(POLL_S * 2.5)  # every other process follows within its poll interval
    for port in fleet["a_metrics"]:
        assert _metric(port, "router_adapter_held_out_apgr") == pytest.approx(adopted.held_out_apgr)
        assert _metric(port, "router_adapter_fits_total", result="adopted") == 0  # adopted elsewhere, not fitted here
    for _ in range(6):  # fresh connections: both workers
        client = _fresh_client(fleet["a"])
        assert client.classify(LEADER).decision.p_complex == pytest.approx(b.client.classify(LEADER).decision.p_complex)
        client.close()
    assert _query(url, "SELECT current_generation FROM adapter_state") == [(1,)]


def test_postgresql_killed_under_load_loses_no_acknowledged_outcome_and_fails_no_answer(fleet):
    pg, addresses = fleet["pg"], [fleet["a"], fleet["b"].address]
    acknowledged, refused, failed = [], [], []
    stop = threading.Event()

    def load(worker: int) -> None:
        """Answers and their outcomes on one connection per replica (one
        worker of a), so each outcome finds its answer in the memory of the
        process that gave it, whatever the store's state."""
        clients = [_fresh_client(a) for a in addresses]
        i = 0
        while not stop.is_set():
            i += 1
            client = clients[(worker + i) % 2]
            try:
                answer = client.generate(f"Say hello to caller {worker}-{i}.", route="large", session_id=f"load-{worker}-{i % 3}",
                                         cache="off", max_tokens=4)
            except Exception as exc:  # any failed answer fails the test
                failed.append(repr(exc))
                continue
            try:
                client.feedback(answer.request_id, rating=5)
                acknowledged.append(answer.request_id)
            except UnavailableError as exc:
                refused.append(str(exc))
        for client in clients:
            client.close()

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(6)
    pg.kill()
    killed_at = len(acknowledged)
    time.sleep(5)
    pg.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(120)
    print(f"\nPostgreSQL down 5 s under load: {len(acknowledged)} outcomes acknowledged, {len(refused)} refused, {len(failed)} answers failed")
    assert not failed, failed[:3]
    assert refused and all("try again" in r for r in refused), refused[:3]
    assert len(acknowledged) > killed_at + 3  # outcomes were taken again after the restart
    stored = {r[0] for r in _query(pg.url, "SELECT request_id FROM feedback WHERE rating = 5")}
    assert set(acknowledged) <= stored
    ports = _metric_ports(fleet)
    assert sum(_metric(p, "router_store_errors_total", kind="feedback") for p in ports) == len(refused)
    wait_for(lambda: all(_metric(p, "router_store_buffered") == 0 for p in ports), 30, "every buffer drained")
    assert sum(_metric(p, "router_store_dropped_total", kind=k) for p in ports for k in ("answer", "session", "shadow")) == 0


def test_sigterm_stops_both_replicas(fleet):
    proc, workers = fleet["proc"], _workers(fleet["proc"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
    assert stop_server(fleet["b"]) == 0
