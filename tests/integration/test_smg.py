"""The large tier served by SMG (Shepherd Model Gateway) in front of two real
vLLM gRPC CPU workers, the small tier in process: every process real, on
loopback. Tests run in file order; the later ones kill and restart workers
and the gateway.

Needs the `scale` extra (smg, smg-grpc-servicer, smg-grpc-proto), which
`make test` installs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import ROOT, _test_config, free_port, start_server, stop_server, wait_for

pytest.importorskip("smg", reason="the scale extra is not installed (make test installs it)")

MODEL = "SmolLM2-135M-Instruct"
LARGE_HEALTH = "router.v1.Router/large"
START_TIMEOUT_S = 420


class Proc:
    """A child in its own process group, logging to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None):
        self.argv, self.log_path, self.env = argv, log_path, env or {}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group (a worker's engine process too)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def worker(model_dir: Path, port: int, log_path: Path, core: str) -> Proc:
    """vLLM's gRPC server (what SMG's vllm backend talks to); warm-up off,
    as SMG's servicer otherwise warms up for minutes on CPU."""
    return Proc([sys.executable, "-m", "vllm.entrypoints.launchers.grpc_server", "--model", str(model_dir), "--served-model-name", MODEL,
                 "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
                 "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "8"],
                log_path, {"SMG_VLLM_SERVICER_WARMUP": "off", "VLLM_CPU_OMP_THREADS_BIND": core})


def gateway(model_dir: Path, port: int, metrics_port: int, workers: list[int], log_path: Path) -> Proc:
    smg = Path(sys.executable).parent / "smg"
    return Proc([str(smg), "launch", "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(metrics_port),
                 "--worker-urls", *[f"grpc://127.0.0.1:{p}" for p in workers], "--model-path", str(model_dir),
                 "--health-check-interval-secs", "1", "--log-level", "warn"], log_path)


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read() or b"null")


def readiness(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/readiness", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smg")
    ports = [free_port(), free_port()]
    smg_port, smg_metrics = free_port(), free_port()
    config = _test_config(tmp, tiers={"large": {"backend": "smg", "gateway_url": f"http://127.0.0.1:{smg_port}", "engine_args": {}}})
    model_dir = tmp / MODEL  # prepared by _test_config: the hostile generation_config.json included
    workers = [worker(model_dir, p, tmp / f"worker{i}.log", str(i)) for i, p in enumerate(ports)]
    smg = gateway(model_dir, smg_port, smg_metrics, ports, tmp / "smg.log")
    for w in workers:
        w.start()
    smg.start()
    url = f"http://127.0.0.1:{smg_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while readiness(url) != 200:
            for p in (*workers, smg):
                if not p.alive():
                    pytest.fail(f"{p.argv[:4]} exited {p.process.returncode}:\n{p.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"SMG not ready after {START_TIMEOUT_S} s:\n{smg.log()}\n{workers[0].log()}")
            time.sleep(1)
        live = start_server(config, tmp)
    except BaseException:
        for p in (smg, *workers):
            p.kill()
        raise
    smg.metrics_url = f"http://127.0.0.1:{smg_metrics}/metrics"
    yield live, workers, smg, url
    try:
        assert stop_server(live) == 0
    finally:
        for p in (smg, *workers):
            p.kill()


def test_greedy_answers_through_smg_match_the_in_process_tier(pool):
    live = pool[0]
    question = "What is the capital of France?"
    local = live.client.generate(question, route="small", cache="off", max_tokens=32)
    served = live.client.generate(question, route="large", cache="off", max_tokens=32)
    assert "Paris" in served.text
    assert served.text == local.text
    assert (served.decision.tier_name, served.decision.degraded) == ("large", False)
    assert served.usage.prompt_tokens == local.usage.prompt_tokens  # counted with the tier's own tokenizer


def test_a_streamed_answer_through_smg_is_the_unary_one(pool):
    live = pool[0]
    question = "Name three primary colours."
    events = list(live.client.generate_stream(question, route="large", cache="off", max_tokens=40))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "final" and kinds.count("delta") >= 2
    unary = live.client.generate(question, route="large", cache="off", max_tokens=40)
    assert "".join(e.delta for e in events if e.WhichOneof("event") == "delta") == unary.text


def test_the_deployments_probes_and_dashboard_panels_match_a_real_gateway(pool):
    """deploy/k8s/smg-*.yaml probe /readiness and /liveness; the dashboard's
    smg_* panels read series a real SMG exports."""
    from .test_observability import DASHBOARD, metric_names_in

    _, _, smg, url = pool
    assert readiness(url) == 200
    with urllib.request.urlopen(f"{url}/liveness", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(smg.metrics_url, timeout=5) as r:
        exported = {line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines() if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {n for p in dashboard["panels"] for t in p["targets"] for n in metric_names_in(t["expr"]) if n.startswith("smg_")}
    assert len(wanted) >= 4 and wanted <= exported, wanted - exported


def test_a_worker_killed_under_load_fails_no_request(pool):
    """Six callers keep both workers busy; one worker is killed (SIGKILL, its
    engine too) a second in. Every request is answered, all but a few by the
    pool itself (a request the dead worker held may still fall back to the
    small tier, before its first token, marked degraded), and SMG takes the
    dead worker out."""
    live, workers, _, url = pool
    assert _healthy_workers(url) == 2
    questions = [f"Give one fact about the number {n}." for n in range(36)]
    with ThreadPoolExecutor(6) as executor:
        futures = [executor.submit(live.client.generate, q, route="large", cache="off", max_tokens=8) for q in questions]
        time.sleep(1.0)
        workers[1].kill()
        answers = [f.result(timeout=120) for f in futures]
    assert all(a.text.strip() for a in answers)
    by_pool = sum(a.decision.tier_name == "large" and not a.decision.degraded for a in answers)
    assert by_pool >= len(answers) - 6, [(a.decision.tier_name, a.decision.reason) for a in answers]
    wait_for(lambda: _healthy_workers(url) == 1, 30, "SMG to mark the killed worker unhealthy")
    print(f"\nkilled a worker under load: {len(answers)} answered, {by_pool} by the pool, "
          f"{len(answers) - by_pool} fell back before their first token")


def test_a_restarted_worker_rejoins_the_pool(pool):
    live, workers, smg, url = pool
    workers[1].start()
    _, body = http_json(f"{url}/workers")
    wait_for(lambda: _healthy_workers(url) == 2, 300, "the restarted worker to be healthy in SMG")
    r = live.client.generate("What is 2 + 2?", route="large", cache="off", max_tokens=8)
    assert r.text.strip()


def _healthy_workers(url: str) -> int:
    try:
        _, body = http_json(f"{url}/workers")
    except OSError:
        return -1
    workers = body.get("workers", body) if isinstance(body, dict) else body
    return sum(1 for w in workers if isinstance(w, dict) and w.get("is_healthy", w.get("healthy")))


def test_the_whole_pool_down_falls_back_to_small_then_recovers(pool):
    live, workers, smg, url = pool
    smg.kill()
    wait_for(lambda: live.client.health(LARGE_HEALTH) == "NOT_SERVING", 20, "the large tier to be NOT_SERVING")
    r = live.client.generate("Prove that there are infinitely many primes.", cache="off", max_tokens=8)
    assert (r.decision.tier_name, r.decision.reason, r.decision.degraded) == ("small", "fallback", True)
    smg.start()
    wait_for(lambda: live.client.health(LARGE_HEALTH) == "SERVING", 120, "the large tier to come back")
    r = live.client.generate("What is the capital of Peru?", route="large", cache="off", max_tokens=8)
    assert (r.decision.tier_name, r.decision.degraded) == ("large", False) and r.text.strip()
