"""What the SMG path costs: time to first token through an SMG gateway
(OpenAI chat completions over HTTP, the way an `smg` tier calls it) against
the same vLLM gRPC worker called directly (its `Generate` RPC, from token
ids rendered here), in alternating blocks, one run. One worker on core 1,
the gateway and the callers beside it.

    python -m benchmarks.smg [--out docs/smg.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / ".cache/models/SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = ["What is the capital of Italy?", "Name three kinds of clouds.", "who discovered penicillin",
             "What is the chemical symbol for gold?"]
MAX_TOKENS, ROUNDS, PER_BLOCK = 16, 6, 12


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


async def _via_gateway(client, url: str, question: str) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "top_k": -1, "stream": True}
    started, first = time.perf_counter(), None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data:") and line.strip() != "data: [DONE]":
                event = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):  # text, not the role-only opener
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no content from the gateway")
    return first


async def _direct(stub, pb, tokenizer, question: str, n: int) -> float:
    from server.tiers.prompt import render_ids
    from server.types import ChatMessage

    started = time.perf_counter()
    ids = render_ids(tokenizer, [ChatMessage("user", question)])  # the gateway tokenises too: both paths pay it
    request = pb.GenerateRequest(request_id=f"direct-{n}-{time.monotonic_ns()}", tokenized=pb.TokenizedInput(input_ids=ids),
                                 sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), stream=True)
    first = None
    async for response in stub.Generate(request):
        if first is None and response.HasField("chunk") and response.chunk.token_ids:
            first = time.perf_counter() - started
    return first


async def measure(gateway_url: str, worker_address: str, concurrency: int) -> dict:
    import grpc
    import httpx
    from smg_grpc_proto import vllm_engine_pb2 as pb
    from smg_grpc_proto import vllm_engine_pb2_grpc as pb_grpc
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    channel = grpc.aio.insecure_channel(worker_address)
    stub = pb_grpc.VllmEngineStub(channel)
    ttft: dict[str, list[float]] = {"gateway": [], "direct": []}
    async with httpx.AsyncClient(timeout=120) as client:
        async def block(path: str, n: int) -> None:
            async def caller(k: int):
                for i in range(k, n, concurrency):
                    q = QUESTIONS[i % len(QUESTIONS)]
                    t = await (_via_gateway(client, gateway_url, q) if path == "gateway" else _direct(stub, pb, tokenizer, q, i))
                    if n == PER_BLOCK:
                        ttft[path].append(t)
            await asyncio.gather(*(caller(k) for k in range(concurrency)))

        for path in ("gateway", "direct"):
            await block(path, concurrency)  # warm
        for r in range(ROUNDS):
            for path in (("gateway", "direct") if r % 2 == 0 else ("direct", "gateway")):
                await block(path, PER_BLOCK)
    await channel.close()
    out = {path: {"ttft_p50_ms": float(np.percentile(np.array(v) * 1e3, 50)), "ttft_p99_ms": float(np.percentile(np.array(v) * 1e3, 99)),
                  "requests": len(v)} for path, v in ttft.items()}
    out["added_ttft_p50_ms"] = out["gateway"]["ttft_p50_ms"] - out["direct"]["ttft_p50_ms"]
    out["added_ttft_p99_ms"] = out["gateway"]["ttft_p99_ms"] - out["direct"]["ttft_p99_ms"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.smg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/smg.json")
    args = parser.parse_args(argv)
    logs = Path("/tmp/triage-bench-smg")
    logs.mkdir(exist_ok=True)
    worker_port, gateway_port = _port(), _port()
    worker = _start([sys.executable, "-m", "vllm.entrypoints.launchers.grpc_server", "--model", str(MODEL_DIR), "--served-model-name", MODEL,
                     "--host", "127.0.0.1", "--port", str(worker_port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
                     "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--max-num-seqs", "16"],
                    logs / "worker.log", {"SMG_VLLM_SERVICER_WARMUP": "off", "VLLM_CPU_OMP_THREADS_BIND": "1"})
    gateway = _start([str(Path(sys.executable).parent / "smg"), "launch", "--host", "127.0.0.1", "--port", str(gateway_port),
                      "--prometheus-port", str(_port()), "--worker-urls", f"grpc://127.0.0.1:{worker_port}", "--model-path", str(MODEL_DIR),
                      "--log-level", "warn"], logs / "smg.log")
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readiness", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"the worker or gateway did not start; logs in {logs}")
            time.sleep(1)
        results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "max_tokens": MAX_TOKENS, "rounds": ROUNDS,
                   "per_block": PER_BLOCK, "levels": {}}
        for c in (1, 4):
            r = results["levels"][str(c)] = asyncio.run(measure(url, f"127.0.0.1:{worker_port}", c))
            print(f"concurrency {c}: TTFT p50 {r['gateway']['ttft_p50_ms']:.1f} ms through SMG, {r['direct']['ttft_p50_ms']:.1f} ms direct "
                  f"(added {r['added_ttft_p50_ms']:+.1f} ms); p99 added {r['added_ttft_p99_ms']:+.1f} ms", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for p in (gateway, worker):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
