"""The router as a light front: both tiers remote, against the same
`vllm serve` called directly, in one run.

    python -m benchmarks.remote [--levels 1,4,16] [--rounds 8] [--out docs] [--instant-upstream]

Starts one `vllm serve` (the prepared SmolLM2 folder, CPU build) and the
router as its own process (`python -m server`) with both tiers pointing at
it and the semantic cache off. Prints:
- the router's resident memory once SERVING and idle, and which of torch,
  transformers and vLLM it imported (none should be);
- per concurrency level, streaming, greedy, alternating router and direct
  blocks: TTFT p50/p99 and generated tokens/s, the direct path being
  `/v1/chat/completions` on the same server with the same messages.
Writes `remote.json` beside the other results; docs/benchmarks.md quotes it.

`--instant-upstream` puts benchmarks/simulated_vllm.py at its instant pace (answers at once)
where `vllm serve` was, so no engine time hides what the router adds and no
engine process competes with it for the cores; writes
`remote-instant.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from clients import AsyncTriageClient, TriageClient

from .load import alternating, router_vs_direct, streamed

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".cache/models/SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
PROMPTS = ["What is the capital of Italy?", "Name three kinds of clouds.", "who discovered penicillin",
           "What is the chemical symbol for gold?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_vllm(port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR), "--served-model-name", MODEL,
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
         "--kv-cache-memory-bytes", str(512 * 1024 * 1024), "--max-num-seqs", "16"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _router_config(url: str, folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "config/cpu.yaml").read_text())
    for tier in raw["tiers"].values():
        tier.update(backend="remote", replicas=[url], model=MODEL, model_path=str(MODEL_DIR))
        tier.pop("engine_args", None)
    raw["cache"]["semantic"] = False
    path = folder / "remote-front.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def _healthy(url: str, path: str = "/health") -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _mapped(pid: int, names=("torch", "transformers", "vllm")) -> list[str]:
    """Which of these packages' files the process has mapped (their native
    libraries): imported, as seen from outside."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [n for n in names if f"/site-packages/{n}/" in maps]


async def _direct(http, url: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """One streamed chat completion straight to the server, read with aiohttp
    (the fastest client here: `python -m benchmarks.upstream_client`), so the
    baseline carries no client overhead the router's path does not."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        async for raw in resp.content:
            line = raw.decode()
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                first = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first, 0.0, tokens  # all of it is the server's


async def _level(address: str, url: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    import aiohttp

    async with AsyncTriageClient(address, timeout=300) as client, aiohttp.ClientSession() as http:
        async def block(path: str, n: int) -> dict:
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int):
                async with sem:
                    prompt = PROMPTS[i % len(PROMPTS)]
                    return await (streamed(client, prompt, max_tokens, route="small") if path == "router" else _direct(http, url, prompt, max_tokens))

            started = time.perf_counter()
            out = await asyncio.gather(*(one(i) for i in range(n)))
            return {"ttft_s": [o[0] for o in out], "own_s": [o[1] for o in out], "tokens": sum(o[-1] for o in out),
                    "wall_s": time.perf_counter() - started}

        return router_vs_direct(await alternating(block, rounds, per_block=max(16, 2 * concurrency), warm=concurrency))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--instant-upstream", action="store_true", help="an upstream that answers at once instead of vllm serve")
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "levels": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        vllm_log = (tmp / "vllm.log").open("w")
        server_log = (tmp / "router.log").open("w")
        vllm = (subprocess.Popen([sys.executable, "-m", "benchmarks.simulated_vllm", str(port), str(MODEL_DIR), MODEL, "--pace", "instant"], cwd=ROOT,
                                 stdout=vllm_log, stderr=subprocess.STDOUT, start_new_session=True)
                if args.instant_upstream else _start_vllm(port, vllm_log))
        router = None
        try:
            print("starting vllm serve…", flush=True)
            _wait(lambda: _healthy(url), 600, "vllm serve")
            router = subprocess.Popen([sys.executable, "-m", "server", "--config", str(_router_config(url, tmp)), "--port", "0",
                                       "--metrics-port", "-1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=server_log, text=True)
            address = re.search(r"gRPC on ([\d.]+:\d+)", router.stdout.readline()).group(1)
            with TriageClient(address, timeout=10) as client:
                _wait(lambda: client.health() == "SERVING", 120, "the router")
            time.sleep(2)
            result["router_idle_rss_mb"] = _rss_mb(router.pid)
            result["router_imports"] = _mapped(router.pid)
            print(f"router idle RSS {result['router_idle_rss_mb']:.0f} MB; heavy packages mapped: {result['router_imports'] or 'none'}", flush=True)
            for c in (int(x) for x in args.levels.split(",")):
                r = result["levels"][str(c)] = asyncio.run(_level(address, url, c, args.rounds, args.max_tokens))
                lo, hi = r["added_ttft_p50_ci_ms"]
                print(f"c={c}: ratio {r['throughput_ratio']:.3f}, added TTFT p50 {r['added_ttft_p50_ms']:+.2f} ms "
                      f"(95% interval {lo:+.2f} to {hi:+.2f}), p99 {r['added_ttft_p99_ms']:+.2f} ms", flush=True)
        finally:
            for proc in (router, vllm):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            try:
                os.killpg(vllm.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["upstream"] = "instant" if args.instant_upstream else "vllm serve"
    (out / ("remote-instant.json" if args.instant_upstream else "remote.json")).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
