"""Several router processes on one port (`server.workers`, server/workers.py),
in front of a real `vllm serve` of the CPU build that serves both tiers; the
large tier streams 4 tokens to a message (`stream_interval`). Tests run in
file order: answers, then a worker killed, then the stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import psutil
import pytest

from clients import TriageClient
from clients.errors import UnavailableError

from .conftest import ROOT, RemoteVllm, _test_config, free_port, wait_for

WORKERS = 2
INTERVAL = 4  # the large tier's stream_interval
CAPITAL = "What is the capital of France?"


def _free_pair() -> int:
    """A port p with p + 1 free too: worker i serves /metrics on p + i."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    pytest.fail("no two adjacent free ports")


def _fresh_client(address: str) -> TriageClient:
    """Its own TCP connection: grpc would otherwise share one subchannel
    between channels to the same address, and the kernel spreads connections,
    not calls, over the workers."""
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return TriageClient(address, timeout=120, channel=channel)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _answered(metrics_port: int) -> float:
    """Generate calls this worker answered OK, from its own /metrics."""
    text = _metrics(metrics_port)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("router_requests_total{") and 'rpc="Generate"' in line and 'code="OK"' in line)


def _workers(supervisor: subprocess.Popen) -> list[int]:
    return sorted(p.pid for p in psutil.Process(supervisor.pid).children() if p.status() != psutil.STATUS_ZOMBIE)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    upstream = RemoteVllm(tmp / "SmolLM2-135M-Instruct", free_port(), tmp / "vllm-serve.log")
    remote = {"backend": "remote", "replicas": [upstream.url], "engine_args": {}}
    port, metrics = free_port(), _free_pair()
    config = _test_config(tmp, tiers={"small": remote, "large": {**remote, "stream_interval": INTERVAL}}, retrieval={"index": None},
                          server={"workers": WORKERS, "port": port, "metrics_port": metrics, "http_port": -1})
    upstream.start()
    log = (tmp / "router.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(config)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = proc.stdout.readline()
        assert re.search(rf"triage: {WORKERS} workers on [\d.]+:{port}", first), first
        address = f"127.0.0.1:{port}"
        probe = TriageClient(address, timeout=30)
        wait_for(lambda: _serving(probe) and all(_ready(metrics + i) for i in range(WORKERS)), 420, "every worker ready")
        probe.close()
        yield proc, address, metrics, tmp / "router.log"
    finally:
        if proc.poll() is None:  # a test failed before the stop: leave nothing running
            for pid in _workers(proc):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        upstream.stop()


def _serving(client: TriageClient) -> bool:
    try:
        return client.health() == "SERVING"
    except UnavailableError:  # not listening yet
        return False


def _ready(port: int) -> bool:
    """Both tiers ready in the worker whose /metrics is on `port`."""
    try:
        text = _metrics(port)
    except OSError:  # not started yet
        return False
    return sum(line.startswith("router_engine_ready{") and line.endswith(" 1.0") for line in text.splitlines()) == 2


def _ask_on_fresh_connections(address: str, n: int, connect_retries: int = 0) -> list[str]:
    """`connect_retries`: a new connection the kernel handed to a worker as
    it died is reset (UNAVAILABLE, as gRPC clients retry it); try again on a
    new connection that many times."""
    texts = []
    for _ in range(n):
        for attempt in range(connect_retries + 1):
            client = _fresh_client(address)
            try:
                texts.append(client.generate(CAPITAL, route="small", cache="off").text)
                break
            except UnavailableError as exc:
                if attempt == connect_retries or "reset" not in str(exc).lower() and "connect" not in str(exc).lower():
                    raise
                time.sleep(0.2)
            finally:
                client.close()
    return texts


def test_connections_are_spread_over_the_workers_and_each_answers(fleet):
    proc, address, metrics, _ = fleet
    before = [_answered(metrics + i) for i in range(WORKERS)]
    texts = _ask_on_fresh_connections(address, 16)
    assert all("Paris" in t for t in texts), texts
    answered = [_answered(metrics + i) - before[i] for i in range(WORKERS)]
    assert sum(answered) == 16
    assert min(answered) >= 1, answered  # one worker alone: 2 ** -15 if the kernel spreads them


def test_a_stream_interval_sends_the_same_text_in_fewer_messages(fleet):
    _, address, _, _ = fleet
    story = "Write a short story about a lighthouse keeper."
    client = _fresh_client(address)
    try:
        streams = {tier: list(client.generate_stream(story, route=tier, cache="off", max_tokens=48)) for tier in ("small", "large")}
    finally:
        client.close()
    text = {tier: "".join(e.delta for e in events if e.WhichOneof("event") == "delta") for tier, events in streams.items()}
    deltas = {tier: [e.delta for e in events if e.WhichOneof("event") == "delta"] for tier, events in streams.items()}
    tokens = {tier: events[-1].final.usage.completion_tokens for tier, events in streams.items()}
    assert text["large"] == text["small"] and tokens["large"] == tokens["small"] == 48  # one greedy model behind both
    assert len(deltas["small"]) >= 24  # about a token a message (events that arrive together are merged)
    # The first token at once, then at least INTERVAL to a message; the rest with the finish.
    assert len(deltas["large"]) <= 2 + (48 - 1) // INTERVAL, deltas["large"]


def test_a_killed_worker_is_replaced_and_the_others_keep_answering(fleet):
    proc, address, metrics, log = fleet
    pids = _workers(proc)
    assert len(pids) == WORKERS
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: pids[0] not in _workers(proc), 10, "the killed worker to be reaped")
    texts = _ask_on_fresh_connections(address, 4, connect_retries=3)  # while it is gone: the other listens alone
    assert all("Paris" in t for t in texts), texts
    wait_for(lambda: len(_workers(proc)) == WORKERS, 30, "the supervisor to start a new worker")
    wait_for(lambda: all(_ready(metrics + i) for i in range(WORKERS)), 120, "the new worker ready")
    assert re.search(r"worker \d \(pid %d\) exited with -9" % pids[0], log.read_text())


def test_sigterm_stops_every_worker(fleet):
    proc, *_ = fleet
    workers = _workers(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
