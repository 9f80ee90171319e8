"""`make bench` sections 1, 2 and 11: the Classify RPC's load, the router's
overhead against the same engine directly, and the HTTP door beside gRPC."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np


from .load import alternating, classify_and_health_blocks, router_vs_direct, staggered


OVERHEAD_PROMPTS = [
    "What is the capital of Italy?",
    "Name three kinds of clouds.",
    "who discovered penicillin",
    "What is the chemical symbol for gold?",
]


# ---- 1. Classify load, run in a child process --------------------------------

def classify_bench(address: str, levels=(1, 8, 32, 64), seconds: float = 3.0, rounds: int = 3) -> list[dict]:
    """Per level, Classify and Health/Check loads in alternating blocks; each
    row is the block with the median rate of its RPC."""
    results = []
    for c in levels:
        runs = classify_and_health_blocks(address, c, seconds, rounds)
        r, ceiling = (sorted(runs[rpc], key=lambda x: x["rps"])[rounds // 2] for rpc in ("classify", "health"))
        r["health_ceiling"] = ceiling
        r["ratio_to_ceiling"] = r["rps"] / ceiling["rps"]
        r["ratios_by_round"] = [a["rps"] / b["rps"] for a, b in zip(runs["classify"], runs["health"])]
        results.append(r)
        print(f"  classify c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; "
              f"health ceiling {r['health_ceiling']['rps']:.0f} req/s (ratio {r['ratio_to_ceiling']:.2f})", flush=True)
    return results


# ---- 2. Router overhead ----------------------------------------------------------

async def _direct_stream(engine, prompt: str, max_tokens: int, rid: str) -> tuple[float, float, int]:
    from server.types import ChatMessage, EffectiveSampling

    started = time.perf_counter()
    rendered = await engine.render([ChatMessage("user", prompt)])
    sampling = EffectiveSampling(0.0, 1.0, 0, max_tokens, (), None, 1.0)
    ttft, tokens = None, 0
    handed = time.perf_counter()
    async for chunk in engine.generate(rendered, sampling, rid):
        if ttft is None and chunk.completion_tokens > 0:
            ttft = time.perf_counter() - started
        tokens = chunk.completion_tokens
    return ttft, handed - started, tokens


def _lag_buckets(app) -> dict[float, float]:
    """Cumulative bucket counts of the router's event-loop lag histogram."""
    return {float(s.labels["le"]): s.value for m in app.router.metrics.loop_lag_seconds.collect() for s in m.samples
            if s.name.endswith("_bucket")}


def _lag_summary(before: dict, after: dict) -> dict:
    """Ticks observed between two snapshots, the share later than 5 ms, and
    the bucket bound holding the 99th percentile."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta[float("inf")]
    p99 = next((le for le, n in delta.items() if total and n >= 0.99 * total), float("inf"))
    return {"ticks": total, "share_over_5ms": (total - delta[0.005]) / total if total else 0.0, "p99_bucket_s": p99}


def _gc_totals(app) -> dict:
    """Collections so far (all generations): count, seconds, and cumulative bucket counts."""
    out = {"collections": 0.0, "seconds": 0.0, "buckets": {}}
    for m in app.router.metrics.gc_pause_seconds.collect():
        for sample in m.samples:
            if sample.name.endswith("_count"):
                out["collections"] += sample.value
            elif sample.name.endswith("_sum"):
                out["seconds"] += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out["buckets"][le] = out["buckets"].get(le, 0.0) + sample.value
    return out


def _gc_summary(before: dict, after: dict) -> dict:
    """Collections between two snapshots, their total time, and the bucket holding the longest."""
    n = after["collections"] - before["collections"]
    longest = next((le for le in sorted(after["buckets"]) if after["buckets"][le] - before["buckets"].get(le, 0.0) >= n), float("inf"))
    return {"collections": n, "seconds": after["seconds"] - before["seconds"], "max_bucket_s": longest}


def full_collection_ms(rounds: int = 3) -> dict:
    """A full garbage collection's duration in this process with the heap
    frozen (as the server runs after start-up) and unfrozen (as it ran
    before), alternating; the heap is left frozen."""
    import gc

    from server.observe.stalls import freeze_heap

    times: dict[str, list[float]] = {"frozen": [], "unfrozen": []}
    for _ in range(rounds):
        for state in ("unfrozen", "frozen"):
            if state == "unfrozen":
                gc.unfreeze()
            else:
                freeze_heap()
            started = time.perf_counter()
            gc.collect()
            times[state].append((time.perf_counter() - started) * 1e3)
    return {state: float(np.median(v)) for state, v in times.items()} | {"tracked_objects_frozen": gc.get_freeze_count()}


async def overhead_bench(app, address: str, levels=(4, 16), rounds: int = 6, max_tokens: int = 32) -> dict:
    """Each concurrency level in its own rounds, router and direct alternating."""
    out = {"full_collection_ms": full_collection_ms()}
    print(f"  a full garbage collection: {out['full_collection_ms']['unfrozen']:.1f} ms with the heap unfrozen, "
          f"{out['full_collection_ms']['frozen']:.1f} ms frozen", flush=True)
    for concurrency in levels:
        before, gc_before = _lag_buckets(app), _gc_totals(app)
        out[str(concurrency)] = r = await _overhead_level(app, address, rounds, 4 * concurrency, concurrency, max_tokens)
        r["loop_lag"] = _lag_summary(before, _lag_buckets(app))
        r["gc"] = _gc_summary(gc_before, _gc_totals(app))
        print(f"  c={concurrency}: ratio {r['throughput_ratio']:.3f}, added TTFT p50 {r['added_ttft_p50_ms']:+.1f} ms, "
              f"p99 {r['added_ttft_p99_ms']:+.1f} ms; loop lag over 5 ms in {r['loop_lag']['share_over_5ms']:.1%} of ticks", flush=True)
    return out


async def _router_block(address: str, prompts: list[str], concurrency: int, max_tokens: int, load: str = "stream") -> dict:
    """The router path's load from a child process (benchmarks/load.py
    stream, or http for the OpenAI-compatible endpoint), as a client would
    be: sharing the server's event loop would put the client's own work into
    the router's figures. Started without blocking the loop, which is
    serving the router."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.load", load, address, str(concurrency), "--max-tokens", str(max_tokens),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(json.dumps(prompts).encode())
    if proc.returncode != 0:
        raise SystemExit(f"the stream load failed with exit code {proc.returncode}")
    return json.loads(out)


async def _direct_block(app, tiers: dict, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    async def one(prompt: str):
        return await _direct_stream(app.tiers[tiers[prompt]].engine, prompt, max_tokens, f"direct-{time.monotonic_ns()}")

    return await staggered(one, prompts, concurrency)


async def _overhead_level(app, address: str, rounds: int, per_round: int, concurrency: int, max_tokens: int) -> dict:
    from server.types import ChatMessage

    # The direct path uses the tier the router would pick, so both paths do the same work.
    tiers = {p: app.router.policy.decide((ChatMessage("user", p),))[0].tier for p in OVERHEAD_PROMPTS}

    async def run(path: str, n: int) -> dict:
        prompts = [OVERHEAD_PROMPTS[i % len(OVERHEAD_PROMPTS)] for i in range(n)]
        if path == "router":
            return await _router_block(address, prompts, concurrency, max_tokens)
        return await _direct_block(app, tiers, prompts, concurrency, max_tokens)

    summary = router_vs_direct(await alternating(run, rounds, per_round, warm=concurrency))
    summary["setup"] = {"concurrency": concurrency, "max_tokens": max_tokens, "rounds": rounds, "per_round": per_round,
                        "client": "a separate process"}
    return summary


async def http_bench(app, address: str, levels=(4, 16), rounds: int = 4, max_tokens: int = 32) -> dict:
    """The same streamed workload through gRPC and through the
    OpenAI-compatible HTTP endpoint, alternating blocks, clients in child
    processes. Every prompt is new (HTTP has no per-request cache switch;
    a number in the question keeps the caches from answering)."""
    from .load import summarise_blocks

    base_url, counter, out = f"http://{app.config.server.host}:{app.http_port}", iter(range(10**9)), {}
    for concurrency in levels:
        async def run(path: str, n: int) -> dict:
            prompts = [f"{OVERHEAD_PROMPTS[i % len(OVERHEAD_PROMPTS)]} (question {next(counter)})" for i in range(n)]
            if path == "grpc":
                return await _router_block(address, prompts, concurrency, max_tokens)
            return await _router_block(base_url, prompts, concurrency, max_tokens, load="http")

        blocks = await alternating(run, rounds, 4 * concurrency, warm=concurrency, paths=("grpc", "http"))
        r = out[str(concurrency)] = {path: summarise_blocks(b) for path, b in blocks.items()}
        r["throughput_ratio"] = r["http"]["tokens_per_s"] / r["grpc"]["tokens_per_s"]
        r["added_ttft_p50_ms"] = r["http"]["ttft_p50_ms"] - r["grpc"]["ttft_p50_ms"]
        r["added_ttft_p99_ms"] = r["http"]["ttft_p99_ms"] - r["grpc"]["ttft_p99_ms"]
        print(f"  c={concurrency}: HTTP/gRPC throughput x{r['throughput_ratio']:.3f}, added TTFT p50 {r['added_ttft_p50_ms']:+.1f} ms, "
              f"p99 {r['added_ttft_p99_ms']:+.1f} ms", flush=True)
    out["setup"] = {"max_tokens": max_tokens, "rounds": rounds, "client": "a separate process per block"}
    return out


def http_lines(r: dict | None, date: str) -> list[str]:
    if not r:
        return []
    rows = [f"| {c} | {v['grpc']['tokens_per_s']:.1f} | {v['http']['tokens_per_s']:.1f} | {v['throughput_ratio']:.3f} | "
            f"{v['grpc']['ttft_p50_ms']:.1f} | {v['http']['ttft_p50_ms']:.1f} | {v['added_ttft_p50_ms']:+.1f} | {v['added_ttft_p99_ms']:+.1f} |"
            for c, v in r.items() if c != "setup"]
    return ["## 11. OpenAI-compatible HTTP beside gRPC", "",
            f"Measured {date} with `python -m benchmarks --only http`: the same streamed questions ({r['setup']['max_tokens']} new tokens, "
            f"greedy, every question new) through `GenerateStream` and through `POST /v1/chat/completions` with `stream: true`, "
            f"{r['setup']['rounds']} alternating rounds per level, each block's client in its own process.", "",
            "| concurrency | gRPC tokens/s | HTTP tokens/s | HTTP / gRPC | gRPC TTFT p50 ms | HTTP TTFT p50 ms | added p50 | added p99 |",
            "|---|---|---|---|---|---|---|---|", *rows, ""]
