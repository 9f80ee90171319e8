"""What the benchmarks that run the router as its own process share: its
profile against a simulated vLLM server, starting it and waiting until it
is ready, the CPU its processes used, one streamed answer read through
either front door, and a scope that stops everything it started.

    from benchmarks.harness import grpc_stream, processes, router_config, sse_stream, start_router

(benchmarks/gpu_pace.py, first_token.py, stream_floor.py, soak.py, shadow.py
and target_share_live.py use it.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import yaml

from .remote import MODEL, MODEL_DIR, ROOT, _free_port


def router_config(url: str, folder: Path, streams: int, tree: Path = ROOT, stream_interval: int = 1) -> Path:
    raw = yaml.safe_load((tree / "config/cpu.yaml").read_text())
    for tier in raw["tiers"].values():
        tier.update(backend="remote", replicas=[url], model=MODEL, model_path=str(MODEL_DIR),
                    max_in_flight=streams, max_queued=streams, max_queue_seconds=600)
        tier.pop("engine_args", None)
        if stream_interval > 1:  # a key older trees do not know
            tier["stream_interval"] = stream_interval
    raw["cache"].update(exact=False, semantic=False)
    raw["limits"].update(max_in_flight=streams, max_queued=streams, max_concurrent_streams=streams)
    raw["routing"]["spill"]["enabled"] = False
    path = folder / f"gpu-pace-{abs(hash(str(tree)))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Started(NamedTuple):
    proc: subprocess.Popen
    address: str  # gRPC host:port
    http: str | None  # base URL, None: off
    metrics: str | None  # /metrics URL, None: off


def start_router(config: Path, log, tree: Path = ROOT, http: bool = True, overrides: tuple[str, ...] = (),
                 metrics: bool = False, workers: int = 1) -> Started:
    """`python -m server` (the code in `tree`) on free ports, once it says
    it is ready. `overrides`: --set SECTION.KEY=VALUE items. `workers` > 1:
    that many processes on fixed ports (server/workers.py), metrics off."""
    if workers == 1:
        ports = ["--port", "0", "--http-port", "0" if http else "-1", "--metrics-port", "0" if metrics else "-1"]
    else:
        ports = ["--port", str(_free_port()), "--http-port", str(_free_port()) if http else "-1", "--metrics-port", "-1",
                 "--set", f"server.workers={workers}"]
    argv = [sys.executable, "-m", "server", "--config", str(config), *ports]
    router = subprocess.Popen(argv + [a for o in overrides for a in ("--set", o)], cwd=tree, stdout=subprocess.PIPE, stderr=log, text=True)
    line = router.stdout.readline()
    if workers > 1:  # the supervisor's line, then each worker's
        line = router.stdout.readline()
    address = re.search(r"gRPC on ([\d.]+:\d+)", line).group(1)
    host = address.split(":")[0]
    http_port, metrics_port = re.search(r"HTTP on port (\d+)", line), re.search(r"metrics on port (\d+)", line)
    if (http and http_port is None) or (metrics and metrics_port is None):
        raise SystemExit(f"no HTTP or metrics port in the router's first line: {line!r}")
    ready = 0
    while ready < workers:
        line = router.stdout.readline()
        ready += "ready" in line
        if router.poll() is not None:
            raise SystemExit("the router exited before it was ready")
    return Started(router, address, f"http://{host}:{http_port.group(1)}" if http else None,
                   f"http://{host}:{metrics_port.group(1)}/metrics" if metrics else None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def router_pids(proc: subprocess.Popen, workers: int) -> tuple[int, ...]:
    """The processes that do a router's work: itself, or the workers it
    supervises (its own CPU is a poll every 0.2 s)."""
    import psutil

    return (proc.pid,) if workers == 1 else tuple(p.pid for p in psutil.Process(proc.pid).children())


async def sse_stream(http, url: str, model: str, prompt: str, max_tokens: int, headers=None, extra=None) -> tuple[float, list[float], int]:
    """One streamed chat completion: seconds to the first text, the arrival
    times of every delta, and the completion tokens (same code for the
    simulator and the router's HTTP front)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    started, arrivals, tokens = time.perf_counter(), [], 0
    async with http.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {(await resp.read())[:200]!r}")
        async for raw in resp.content:
            if not raw.startswith(b"data:") or raw.startswith(b"data: [DONE]"):
                continue
            event = json.loads(raw[5:])
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
                arrivals.append(time.perf_counter())
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return (arrivals[0] - started if arrivals else float("nan")), arrivals, tokens


async def grpc_stream(client, prompt: str, max_tokens: int, **options) -> tuple[float, list[float], int]:
    """The same through the gRPC front; `options`: more GenerateRequest fields (a request_id)."""
    started, arrivals, tokens = time.perf_counter(), [], 0
    async for event in client.generate_stream(prompt, route="small", max_tokens=max_tokens, cache="off", temperature=0.0, **options):
        kind = event.WhichOneof("event")
        if kind == "delta":
            arrivals.append(time.perf_counter())
        elif kind == "final":
            tokens = event.final.usage.completion_tokens
    return (arrivals[0] - started if arrivals else float("nan")), arrivals, tokens


@contextlib.contextmanager
def processes():
    """Everything started here is stopped on the way out, router first."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
