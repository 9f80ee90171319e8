"""Loads run in a child process of `python -m benchmarks`: client and server
must not share one GIL. Each prints its results as one JSON object.

    python -m benchmarks.load classify ADDRESS CONCURRENCY SECONDS [--rpc health]
    python -m benchmarks.load exact ADDRESS N
    python -m benchmarks.load stream ADDRESS CONCURRENCY [--max-tokens N] < prompts.json
    python -m benchmarks.load http BASE_URL CONCURRENCY [--max-tokens N] < prompts.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np

from clients import AsyncTriageClient
from clients.loadgen import BUILTIN_MIX
from triage_proto import router_pb2 as pb

EXACT_QUESTION = "Which planet is known as the red planet?"


async def classify_load(address: str, concurrency: int, seconds: float, rpc: str = "classify") -> dict:
    """`rpc` is "classify", or "health" for the ceiling: the cheapest RPC on
    the same server and channel, i.e. what grpc.aio itself costs."""
    latencies: list[float] = []
    texts = BUILTIN_MIX
    async with AsyncTriageClient(address, timeout=10) as client:
        call = client.classify if rpc == "classify" else (lambda _text: client.health())
        await call("warm up")
        stop = time.perf_counter() + seconds

        async def worker(i: int):
            n = i
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await call(texts[n % len(texts)])
                latencies.append(time.perf_counter() - started)
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"rpc": rpc, "concurrency": concurrency, "requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def classify_and_health_blocks(address: str, concurrency: int, seconds: float, rounds: int) -> dict[str, list[dict]]:
    """Classify and Health/Check loads, each from a child process (client and
    server must not share one GIL), in alternating blocks (CH HC CH ...) so
    drift on a noisy machine hits both: each block's classify_load result, by RPC."""
    import subprocess

    runs: dict[str, list[dict]] = {"classify": [], "health": []}
    for i in range(rounds):
        for rpc in (("classify", "health") if i % 2 == 0 else ("health", "classify")):
            out = subprocess.run([sys.executable, "-m", "benchmarks.load", "classify", address, str(concurrency), str(seconds), "--rpc", rpc],
                                 capture_output=True, text=True, check=True)
            runs[rpc].append(json.loads(out.stdout))
    return runs


async def exact_load(address: str, n: int) -> dict:
    """`n` exact-cache hits through Generate, interleaved with
    `n` Health/Check calls on the same channel (the floor any unary RPC pays
    here), one caller."""
    lat = {"hit": [], "health": []}
    async with AsyncTriageClient(address, timeout=120) as client:
        for _ in range(20):  # warm the channel and both handlers
            await client.generate(EXACT_QUESTION, route="small", max_tokens=24)
            await client.health()
        for _ in range(n):
            started = time.perf_counter()
            r = await client.generate(EXACT_QUESTION, route="small", max_tokens=24)
            lat["hit"].append(time.perf_counter() - started)
            if r.cache.status != pb.CACHE_EXACT:
                raise SystemExit(f"expected an exact cache hit, got status {r.cache.status}")
            started = time.perf_counter()
            await client.health()
            lat["health"].append(time.perf_counter() - started)
    out = {"requests": n}
    for kind, xs in lat.items():
        ms = np.array(xs) * 1e3
        out[kind] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    return out


STAGGER_S = 0.25


async def stream_load(address: str, concurrency: int, prompts: list[str], max_tokens: int) -> dict:
    """The prompts through GenerateStream by `concurrency` callers, each
    taking every concurrency-th prompt in turn, caller k starting k x
    STAGGER_S late (so the callers do not move in lock-step waves whose
    shape, not the router, would decide TTFT); cache off, greedy. Each
    request's TTFT (from its call) and tokens."""
    async with AsyncTriageClient(address, timeout=600) as client:
        await client.health()

        return await staggered(lambda prompt: streamed(client, prompt, max_tokens), prompts, concurrency)


async def streamed(client, prompt: str, max_tokens: int, **kwargs) -> tuple[float, float, int]:
    """One GenerateStream call, cache off: seconds to the first text; the
    part of them that was not the engine's (the first text's wait less the
    engine's own time to it, which the router reports as ttft_ms -
    routing_ms: both processes read the same monotonic clock); and the
    completion tokens."""
    started, first, own, tokens = time.perf_counter(), None, None, 0
    async for event in client.generate_stream(prompt, max_tokens=max_tokens, cache="off", **kwargs):
        kind = event.WhichOneof("event")
        if kind == "delta" and first is None:
            first = time.perf_counter() - started
        elif kind == "final":
            tokens = event.final.usage.completion_tokens
            t = event.final.timings
            own = first - (t.ttft_ms - t.routing_ms) / 1e3
    return first, own, tokens


async def http_stream_load(base_url: str, concurrency: int, prompts: list[str], max_tokens: int) -> dict:
    """stream_load's workload through the OpenAI-compatible HTTP endpoint
    (server-sent events, cache off is not an HTTP option: the prompts must
    not repeat a cached question), timed the same way."""
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        async def one(prompt: str):
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}}
            started, first, tokens = time.perf_counter(), None, 0
            async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if first is None and any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                        first = time.perf_counter() - started
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
            return first, tokens

        return await staggered(one, prompts, concurrency)


async def staggered(one, prompts: list, concurrency: int) -> dict:
    """Run `one(prompt)` for every prompt as described in stream_load; the
    router and the direct path of the overhead benchmark share it."""
    results: list = []

    async def caller(k: int):
        await asyncio.sleep(k * STAGGER_S)
        for prompt in prompts[k::concurrency]:
            results.append(await one(prompt))

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    wall = time.perf_counter() - started - (concurrency - 1) * STAGGER_S / 2  # the mean late start
    return {"ttft_s": [r[0] for r in results], "own_s": [r[1] for r in results if len(r) == 3], "tokens": sum(r[-1] for r in results),
            "wall_s": wall}


async def alternating(run_block, rounds: int, per_block: int, warm: int, paths: tuple[str, str] = ("router", "direct")) -> dict[str, list[dict]]:
    """`run_block(path, n)` for both paths: each once with `warm` requests
    (not kept), then `rounds` rounds of `per_block`, in ABAB... order so
    drift hits both alike. Each path's blocks, as `run_block` returns them
    ({"ttft_s", "tokens", "wall_s"})."""
    a, b = paths
    for path in paths:
        await run_block(path, warm)
    blocks: dict[str, list[dict]] = {a: [], b: []}
    for i in range(rounds):
        for path in ((a, b) if i % 2 == 0 else (b, a)):
            blocks[path].append(await run_block(path, per_block))
    return blocks


def summarise_blocks(blocks: list[dict]) -> dict:
    """Blocks of one path or setting as one row: generated tokens/s over
    their time, TTFT p50 and p99 in milliseconds."""
    ttft = np.concatenate([b["ttft_s"] for b in blocks]) * 1e3
    tokens = sum(b["tokens"] for b in blocks)
    return {"tokens_per_s": tokens / sum(b["wall_s"] for b in blocks), "ttft_p50_ms": float(np.percentile(ttft, 50)),
            "ttft_p99_ms": float(np.percentile(ttft, 99)), "requests": int(len(ttft)), "tokens": tokens}


def router_vs_direct(blocks: dict[str, list[dict]]) -> dict:
    """Both paths summarised, with the throughput ratio and the TTFT the
    router adds, each added TTFT with a 95 % bootstrap interval: how far the
    samples alone could move it."""
    out = {path: summarise_blocks(b) for path, b in blocks.items()}
    out["throughput_ratio"] = out["router"]["tokens_per_s"] / out["direct"]["tokens_per_s"]
    router, direct = (np.concatenate([b["ttft_s"] for b in blocks[p]]) * 1e3 for p in ("router", "direct"))
    for q in (50, 99):
        out[f"added_ttft_p{q}_ms"] = out["router"][f"ttft_p{q}_ms"] - out["direct"][f"ttft_p{q}_ms"]
        out[f"added_ttft_p{q}_ci_ms"] = bootstrap_difference(router, direct, q)
    # Per request, the part of TTFT that was not the engine's: on the router
    # path everything outside the engine's own time to first token; on the
    # direct path the render. Free of how each request happened to meet the
    # engine's batches, which decides the end-to-end tail.
    if all(len(b.get("own_s", [])) == len(b["ttft_s"]) for p in ("router", "direct") for b in blocks[p]):
        router, direct = (np.concatenate([b["own_s"] for b in blocks[p]]) * 1e3 for p in ("router", "direct"))
        for q in (50, 99):
            out[f"added_own_p{q}_ms"] = float(np.percentile(router, q) - np.percentile(direct, q))
            out[f"own_p{q}_ms"] = {"router": float(np.percentile(router, q)), "direct": float(np.percentile(direct, q))}
    return out


def bootstrap_difference(a: np.ndarray, b: np.ndarray, q: float, resamples: int = 2000, seed: int = 0) -> list[float]:
    """The 95 % bootstrap interval of percentile(a, q) - percentile(b, q)."""
    rng = np.random.default_rng(seed)
    da = np.percentile(rng.choice(a, (resamples, len(a))), q, axis=1)
    db = np.percentile(rng.choice(b, (resamples, len(b))), q, axis=1)
    low, high = np.percentile(da - db, [2.5, 97.5])
    return [float(low), float(high)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="load", required=True)
    p = sub.add_parser("classify", help="Classify (or Health/Check) calls from CONCURRENCY callers for SECONDS")
    p.add_argument("address")
    p.add_argument("concurrency", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--rpc", choices=["classify", "health"], default="classify")
    p = sub.add_parser("exact", help="N exact-cache hits through Generate, each next to a Health/Check")
    p.add_argument("address")
    p.add_argument("n", type=int)
    p = sub.add_parser("stream", help="each prompt (JSON list on stdin) once through GenerateStream, CONCURRENCY at a time")
    p.add_argument("address")
    p.add_argument("concurrency", type=int)
    p.add_argument("--max-tokens", type=int, default=32)
    p = sub.add_parser("http", help="the same through the OpenAI-compatible HTTP endpoint at BASE_URL")
    p.add_argument("address")
    p.add_argument("concurrency", type=int)
    p.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.load == "classify":
        result = asyncio.run(classify_load(args.address, args.concurrency, args.seconds, args.rpc))
    elif args.load == "stream":
        result = asyncio.run(stream_load(args.address, args.concurrency, json.load(sys.stdin), args.max_tokens))
    elif args.load == "http":
        result = asyncio.run(http_stream_load(args.address, args.concurrency, json.load(sys.stdin), args.max_tokens))
    else:
        result = asyncio.run(exact_load(args.address, args.n))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
