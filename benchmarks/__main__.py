"""`make bench`: the router's speed, measured side by side in one run.

One process hosts both real engines and the router's gRPC server (as
`python -m server` does); every comparison runs in this one run, so the ratios
hold on a noisy machine even when the absolute numbers move.

1. Classify RPC throughput and latency at concurrency 1, 8, 32, 64, from a
   separate client process (client and server must not share one GIL).
2. Router overhead: the same streaming workload through the router (gRPC,
   validation, classification, template) and directly against the same
   in-process engine, interleaved in rounds.
3. Continuous batching: generated tokens/s at concurrency 1, 4, 16.
4. Adaptive routing against always-large on the built-in mix.
5. Caches: exact hits through gRPC, the semantic lookup in and out of the router.
6. The semantic search beside the engine request against searching first and
   against no semantic cache: miss TTFT, hit latency, engine throughput.
9. Spill under load: a burst on the small tier, other callers' TTFT with
   spill on and off (benchmarks/spill.py). (7, 8 and 10 are their own commands.)
11. The OpenAI-compatible HTTP endpoint beside gRPC, the same workload.

    python -m benchmarks --config config/cpu.yaml --out docs
    python -m benchmarks --only overlap      # one section, updating the report
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from clients import AsyncTriageClient
from clients.loadgen import BUILTIN_MIX, run_level, summarise

from .load import EXACT_QUESTION, alternating, classify_and_health_blocks, router_vs_direct, staggered
from .spill import spill_bench, spill_lines

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

    from server.stalls import freeze_heap

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


def _http_lines(r: dict | None, date: str) -> list[str]:
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


# ---- 3 and 4: through the router with the load generator --------------------------

async def batching_bench(address: str, levels=(1, 4, 16), max_tokens: int = 64) -> dict:
    prompts = [{"text": "Write a short paragraph about the history of tea.", "route": "small"}]
    out = {}
    for c in levels:
        samples, wall = await run_level(address, prompts, c, requests=max(4, 2 * c), duration=None, stream=True,
                                        max_tokens=max_tokens, progress=False, cache="off")
        s = summarise(samples, wall)
        out[str(c)] = {"tokens_per_s": s["tokens_per_s"], "rps": s["rps"], "requests": s["requests"], "ok": s["ok"]}
        print(f"  batching c={c}: {s['tokens_per_s']:.1f} tokens/s", flush=True)
    base = out[str(levels[0])]["tokens_per_s"]
    for v in out.values():
        v["scaling_vs_c1"] = v["tokens_per_s"] / base if base else None
    return out


async def adaptive_bench(address: str, concurrency: int = 4) -> dict:
    out = {}
    for name, route in (("adaptive", None), ("always_large", "large")):
        prompts = [{"text": t, "route": route} for t in BUILTIN_MIX]
        samples, wall = await run_level(address, prompts, concurrency, requests=len(prompts), duration=None, stream=False,
                                        max_tokens=None, progress=False, cache="off")
        ok = [s for s in samples if s.code == "OK"]
        e2e = np.array([s.e2e_s for s in ok]) * 1e3
        out[name] = {"requests": len(samples), "ok": len(ok), "mean_ms": float(e2e.mean()), "p95_ms": float(np.percentile(e2e, 95)),
                     "small_share": sum(s.tier == "small" for s in ok) / len(ok), "tokens": sum(s.completion_tokens for s in ok)}
        print(f"  {name}: mean {out[name]['mean_ms']:.0f} ms, p95 {out[name]['p95_ms']:.0f} ms, small share {out[name]['small_share']:.0%}", flush=True)
    out["mean_latency_ratio"] = out["adaptive"]["mean_ms"] / out["always_large"]["mean_ms"]
    out["p95_latency_ratio"] = out["adaptive"]["p95_ms"] / out["always_large"]["p95_ms"]
    return out


# ---- 5. caches ----------------------------------------------------------------------

async def exact_hit_bench(address: str, n: int = 1000) -> dict:
    """Exact-cache hits through gRPC from a separate client process (client
    and server must not share one GIL), next to Health/Check."""
    async with AsyncTriageClient(address, timeout=120) as client:
        first = await client.generate(EXACT_QUESTION, route="small", max_tokens=24)  # the miss that fills it
    result = await asyncio.to_thread(_child, "exact", address, str(n))
    result["miss_ms"] = first.timings.total_ms
    return result


async def in_router_lookup_bench(app, address: str, entries: int = 100_000, rounds: int = 4, per_block: int = 12) -> dict:
    """The semantic lookup as a request sees it (`timings.cache_ms`: the
    exact key, the hop to the embedding thread, embedding and search) with
    the router's semantic cache holding `entries` entries, for one and two
    ONNX Runtime threads per embedding in alternating blocks. One caller,
    unique questions (all misses), one new token each, a pause between
    requests: the engines are idle whenever a lookup runs, which is when a
    second thread has the most to gain."""
    from server.cache import CachedAnswer
    from server.embedding import Embedder
    from triage_proto import router_pb2 as pb

    cache = app.router.cache
    rng = np.random.default_rng(1)
    filler = CachedAnswer("x" * 400, "stop", 20, 100)
    for start in range(0, entries, 10_000):  # another context: never a hit for the questions below
        block = rng.normal(size=(min(10_000, entries - start), cache.semantic.dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        for row in block:
            cache.semantic.add(row, "bench filler", "", filler)
    embedders = {1: cache.embedder, 2: Embedder(threads=2)}
    ms = {t: {"lookup": [], "ttft": []} for t in embedders}
    n = 0
    async with AsyncTriageClient(address, timeout=300) as client:
        for i in range(rounds):
            for threads in ((1, 2) if i % 2 == 0 else (2, 1)):
                cache.embedder = embedders[threads]
                for q in BUILTIN_MIX[:per_block]:
                    n += 1
                    r = await client.generate(f"{q} (request {n})", route="small", max_tokens=1)
                    if r.cache.status != pb.CACHE_MISS:
                        raise SystemExit(f"expected a cache miss, got status {r.cache.status}")
                    ms[threads]["lookup"].append(r.timings.cache_ms)
                    ms[threads]["ttft"].append(r.timings.ttft_ms)
                    await asyncio.sleep(0.1)
    cache.embedder = embedders[1]
    pct = lambda xs, q: float(np.percentile(xs, q))
    return {"entries": len(cache.semantic), "requests_per_setting": rounds * per_block,
            **{f"threads_{t}": {"lookup_p50_ms": pct(v["lookup"], 50), "lookup_p99_ms": pct(v["lookup"], 99),
                                "ttft_p50_ms": pct(v["ttft"], 50), "ttft_p99_ms": pct(v["ttft"], 99)} for t, v in ms.items()}}


# ---- 6. the semantic search beside the engine request ------------------------------

PLACES = ["Australia", "Canada", "Brazil", "Kenya", "Japan", "Norway", "Chile", "Egypt", "Peru", "Spain", "Vietnam", "Ghana",
          "Portugal", "Mexico", "Finland", "Morocco", "Nepal", "Poland", "Ireland", "Austria"]
OVERLAP_SETTINGS = ("semantic_off", "overlap", "sequential")


def _fill_semantic(cache, entries: int) -> None:
    """Random unit vectors in another context: a full cache's search cost,
    never a hit for the questions asked."""
    from server.cache import CachedAnswer

    rng = np.random.default_rng(1)
    filler = CachedAnswer("x" * 400, "stop", 20, 100)
    while len(cache.semantic) < entries:
        block = rng.normal(size=(min(10_000, entries - len(cache.semantic)), cache.semantic.dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        for row in block:
            cache.semantic.add(row, "bench filler", "", filler)


def _use(app, setting: str) -> str:
    """Switch the router to a setting; returns the requests' cache mode."""
    from dataclasses import replace

    cache = app.router.cache
    cache.config = replace(cache.config, semantic_overlap=setting == "overlap")
    return "exact_only" if setting == "semantic_off" else "default"


async def overlap_bench(app, address: str, entries: int = 100_000, rounds: int = 4, per_block: int = 25,
                        mix_requests: int = 20, hit_share: float = 0.3, concurrency: int = 4, max_tokens: int = 32) -> dict:
    """With `entries` in the semantic cache, in alternating blocks:
    (a) misses, one caller, streamed: TTFT with the semantic cache off
        (`exact_only`: the exact check only), searched beside the engine
        request (overlap) and searched first (sequential);
    (b) hits (paraphrases of stored questions), one caller, unary: end to end;
    (c) a closed loop of `concurrency` callers, `hit_share` of them
        paraphrases that hit: the engine's generated tokens/s, against the same
        mix with the cache off."""
    from triage_proto import router_pb2 as pb

    _fill_semantic(app.router.cache, entries)
    n = 0
    ttft = {k: [] for k in OVERLAP_SETTINGS}
    hit_ms = {k: [] for k in ("overlap", "sequential")}
    mix = {k: {"tokens": 0, "wall": 0.0, "hits": 0, "requests": 0} for k in ("cache_off", "overlap", "sequential")}
    async with AsyncTriageClient(address, timeout=300) as client:
        for place in PLACES:  # the questions the hits paraphrase, stored once
            r = await client.generate(f"What is the capital of {place}?", route="small", max_tokens=max_tokens)
        for i in range(rounds):
            order = OVERLAP_SETTINGS if i % 2 == 0 else OVERLAP_SETTINGS[::-1]
            for setting in order:
                mode = _use(app, setting)
                for j in range(per_block):
                    q = BUILTIN_MIX[j % len(BUILTIN_MIX)]
                    n += 1
                    started, first = time.perf_counter(), None
                    async for event in client.generate_stream(f"{q} (request {n})", route="small", max_tokens=4, cache=mode):
                        if first is None and event.WhichOneof("event") == "delta":
                            first = time.perf_counter() - started
                        if event.WhichOneof("event") == "final" and event.final.cache.status == pb.CACHE_SEMANTIC:
                            raise SystemExit("a miss question hit the cache")
                    ttft[setting].append(first * 1e3)
                    await asyncio.sleep(0.05)
                if setting == "semantic_off":
                    continue
                for j in range(per_block):
                    place = PLACES[(i * per_block + j) % len(PLACES)]
                    started = time.perf_counter()
                    r = await client.generate(f"What's the capital of {place}?", route="small", max_tokens=max_tokens)
                    if r.cache.status != pb.CACHE_SEMANTIC:
                        raise SystemExit(f"expected a semantic hit for {place}, got {r.cache.status}")
                    hit_ms[setting].append((time.perf_counter() - started) * 1e3)
                    await asyncio.sleep(0.05)
            for setting in (("cache_off", "overlap", "sequential") if i % 2 == 0 else ("sequential", "overlap", "cache_off")):
                mode = "off" if setting == "cache_off" else _use(app, setting)
                hits = int(mix_requests * hit_share)
                prompts = [f"What's the capital of {PLACES[(i * hits + j) % len(PLACES)]}?" for j in range(hits)]
                prompts += [f"{BUILTIN_MIX[j % len(BUILTIN_MIX)]} (request {n}-{j})" for j in range(mix_requests - hits)]
                n += 1
                rng = np.random.default_rng(i)
                rng.shuffle(prompts)
                sem = asyncio.Semaphore(concurrency)

                async def one(prompt):
                    async with sem:
                        return await client.generate(prompt, route="small", max_tokens=max_tokens, cache=mode)

                started = time.perf_counter()
                out = await asyncio.gather(*(one(p) for p in prompts))
                m = mix[setting]
                m["wall"] += time.perf_counter() - started
                m["tokens"] += sum(r.usage.completion_tokens for r in out if r.cache.status != pb.CACHE_SEMANTIC)
                m["hits"] += sum(r.cache.status == pb.CACHE_SEMANTIC for r in out)
                m["requests"] += len(out)
    _use(app, "overlap")
    pct = lambda xs, q: float(np.percentile(xs, q))
    result = {"entries": len(app.router.cache.semantic), "misses_per_setting": rounds * per_block, "hits_per_setting": rounds * per_block,
              "miss_ttft": {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in ttft.items()},
              "hit_e2e": {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in hit_ms.items()},
              "mix": {k: {**v, "tokens_per_s": v["tokens"] / v["wall"]} for k, v in mix.items()},
              "setup": {"concurrency": concurrency, "hit_share": hit_share, "mix_requests": mix_requests, "max_tokens": max_tokens}}
    result["added_miss_ttft_p99_ms"] = result["miss_ttft"]["overlap"]["p99_ms"] - result["miss_ttft"]["semantic_off"]["p99_ms"]
    result["added_miss_ttft_p99_ms_sequential"] = result["miss_ttft"]["sequential"]["p99_ms"] - result["miss_ttft"]["semantic_off"]["p99_ms"]
    result["mix_throughput_ratio"] = result["mix"]["overlap"]["tokens_per_s"] / result["mix"]["cache_off"]["tokens_per_s"]
    result["mix_throughput_ratio_sequential"] = result["mix"]["sequential"]["tokens_per_s"] / result["mix"]["cache_off"]["tokens_per_s"]
    return result


def _overlap_lines(r: dict) -> list[str]:
    t, h, m = r["miss_ttft"], r["hit_e2e"], r["mix"]
    return [
        "## 6. The semantic search beside the engine request (`cache.semantic_overlap`)", "",
        f"{r['entries']:,} entries in the semantic cache; alternating blocks; one caller for misses (streamed, 4 new tokens) and hits "
        f"(unary); {r['misses_per_setting']} of each per setting.", "",
        "| | semantic cache off (exact only) | overlap (default) | search first |", "|---|---|---|---|",
        f"| miss TTFT p50 / p99 ms | {t['semantic_off']['p50_ms']:.1f} / {t['semantic_off']['p99_ms']:.1f} | "
        f"{t['overlap']['p50_ms']:.1f} / {t['overlap']['p99_ms']:.1f} | {t['sequential']['p50_ms']:.1f} / {t['sequential']['p99_ms']:.1f} |",
        f"| hit end to end p50 / p99 ms (gRPC) | n/a | {h['overlap']['p50_ms']:.1f} / {h['overlap']['p99_ms']:.1f} | "
        f"{h['sequential']['p50_ms']:.1f} / {h['sequential']['p99_ms']:.1f} |",
        f"| {r['setup']['hit_share']:.0%}-hit mix, {r['setup']['concurrency']} callers: engine tokens/s (hits) | "
        f"{m['cache_off']['tokens_per_s']:.1f} (cache off) | {m['overlap']['tokens_per_s']:.1f} ({m['overlap']['hits']}) | "
        f"{m['sequential']['tokens_per_s']:.1f} ({m['sequential']['hits']}) |", "",
        f"Added miss TTFT p99 against the semantic cache off: overlap **{r['added_miss_ttft_p99_ms']:+.1f} ms** (target: within +2 ms), "
        f"search first {r['added_miss_ttft_p99_ms_sequential']:+.1f} ms. Hit p99 through gRPC with overlap: **{h['overlap']['p99_ms']:.1f} ms** "
        f"(target: under 25 ms). Engine throughput under the mix against the cache off: overlap **×{r['mix_throughput_ratio']:.3f}**, "
        f"search first ×{r['mix_throughput_ratio_sequential']:.3f} (target: within 5 %). The client runs in the server's process and "
        "event loop, so these are upper bounds on the router's own time.", "",
    ]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pytorch_embedder():
    """all-MiniLM-L6-v2 in PyTorch eager on one thread (what the semantic
    cache used before ONNX Runtime), returning the same unit vectors."""
    import torch

    from server.embedding import mean_pool
    from tools.export_embedder import pytorch_model

    tokenizer, model = pytorch_model()

    def embed(text: str):
        torch.set_num_threads(1)
        with torch.inference_mode():
            enc = tokenizer([text], return_tensors="pt")
            return mean_pool(model(**enc).last_hidden_state.numpy(), enc["attention_mask"].numpy())

    return embed


def _real_questions(n: int) -> list[str]:
    """Up to n questions from the classifier's data set (not in this
    repository); the built-in mix if it is not there."""
    try:
        from classifier.data import load_rows

        texts = [r["text"] for r in load_rows() if len(r["text"]) <= 1000]
    except (OSError, SystemExit, ValueError):
        texts = list(BUILTIN_MIX)
    return texts[:n]


def _semantic_recall(cache, sources: np.ndarray, rng, queries: int = 300) -> dict:
    """Paraphrase-like queries (each a stored real question's vector moved
    to a cosine of about 0.955 from it): how often the search returns that
    entry when the exact similarity is over the threshold."""
    eligible = found = 0
    for i in rng.choice(len(sources), min(queries, len(sources)), replace=False):
        q = sources[i] + 0.0165 * rng.normal(size=sources.shape[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        if float(q @ sources[i]) < 0.951:
            continue
        eligible += 1
        answer, _ = cache.search(q, "ctx", f"question number {i}")
        found += answer is not None and answer.text.lstrip("x") == str(i)  # its own entry (answers are "x" * n + i)
    return {"recall_queries": eligible, "recall": found / eligible if eligible else float("nan"), "recall_among_real": len(sources)}


def _by_length(questions: list[str], seconds: list[float], embedder, split: int = 16) -> dict:
    """Embedding time grows with the question: medians for short and long ones."""
    tokens = np.array([embedder.count_tokens(q) for q in questions])
    ms = np.array(seconds) * 1e3
    short, long_ = ms[tokens <= split], ms[tokens > split]
    return {"length_split_tokens": split, "short_questions": int(len(short)), "long_questions": int(len(long_)),
            "embed_short_p50_ms": float(np.median(short)) if len(short) else float("nan"),
            "embed_long_p50_ms": float(np.median(long_)) if len(long_) else float("nan"),
            "long_max_tokens": int(tokens.max())}


def _tokenizer_cost(embedder, questions: list[str], rounds: int = 5) -> dict:
    """Tokenising a question: the `tokenizers` library as the embedder calls
    it, against transformers' wrapper around the same tokenizer.json (what
    the embedder used before), in alternating rounds."""
    from transformers import AutoTokenizer

    from server.embedding import MAX_TOKENS, model_path

    wrapper = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    direct_s, wrapper_s = [], []
    for _ in range(rounds):
        for q in questions:
            t0 = time.perf_counter()
            embedder.tokenizer.encode_batch([q])
            t1 = time.perf_counter()
            wrapper([q], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
            direct_s.append(t1 - t0), wrapper_s.append(time.perf_counter() - t1)
    return {"tokenize_p50_ms": float(np.median(direct_s) * 1e3), "transformers_tokenize_p50_ms": float(np.median(wrapper_s) * 1e3)}


def _matmul_share(embedder, questions: list[str]) -> dict:
    """Where an embedding's time goes, from ONNX Runtime's own profiler: the
    share of its kernels' time in matrix products, and the rate those run at
    (the 36 dense layers' FLOPs over the MatMul kernels' time, one thread)."""
    import tempfile

    import onnxruntime as ort

    from server.embedding import DIM, ONNX_DIR, ONNX_FILE

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "triage-embedding-profile")
    session = ort.InferenceSession(str(ONNX_DIR / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    dense_params = 6 * (4 * DIM * DIM + 2 * DIM * 4 * DIM)  # per token: Q, K, V, output, and the two feed-forward layers
    flops = 0
    for _ in range(2):  # the first pass warms up; both are profiled, both counted
        for q in questions:
            ids = np.array([embedder.tokenizer.encode(q).ids], dtype=np.int64)
            session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            flops += 2 * dense_params * ids.shape[1]
    trace = Path(session.end_profiling())
    by_op: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] = by_op.get(event["args"]["op_name"], 0.0) + event["dur"] * 1e-6
    trace.unlink()
    matmul = sum(t for op, t in by_op.items() if "MatMul" in op)
    return {"matmul_share": matmul / sum(by_op.values()), "matmul_gflops": flops / matmul / 1e9}


def semantic_bench(entries: int = 100_000, queries: int = 200, answer_chars: int = 400) -> dict:
    """Semantic lookup (embed the question + faiss search + guards) with the
    cache full, and memory per entry measured as RSS growth while filling."""
    from server.cache import CachedAnswer, SemanticCache
    from server.embedding import Embedder

    embedder = Embedder()
    rng = np.random.default_rng(0)
    cache = SemanticCache(embedder.dim, entries, 0.95)
    vectors = rng.normal(size=(entries, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Real questions embed in clusters (random vectors do not): the first
    # rows are real, so the candidate step's recall is measured where it is hard.
    real = _real_questions(5000)
    vectors[: len(real)] = embedder.embed(real, batch_size=64)
    import gc

    gc.collect()
    before = _rss_bytes()
    for i in range(entries):
        cache.add(vectors[i], "ctx", f"question number {i}", CachedAnswer("x" * answer_chars + str(i), "stop", 20, 100))
    gc.collect()
    per_entry = (_rss_bytes() - before) / entries
    import faiss

    flat32 = faiss.IndexFlatIP(embedder.dim)  # the previous storage, for comparison in this run
    flat32.add(vectors)
    vectors_real = vectors[: len(real)].copy()
    del vectors
    questions = [f"{q} ({i})" for i, q in enumerate(BUILTIN_MIX * (queries // len(BUILTIN_MIX) + 1))][:queries]
    torch_embed = _pytorch_embedder()
    embed_s, search_s, total_s, flat_s, errors, torch_s = [], [], [], [], [], []
    vectors_of, best_of = {}, {}
    # Blocks, not per question: the comparisons scan 153 MB or run another
    # model, which would evict the measured path's weights from the CPU
    # caches between its own lookups. Two rounds of each block, so drift
    # during the run touches all three alike.
    half = len(questions) // 2
    for block in (questions[:half], questions[half:]):
        for q in block:  # the lookup as the router does it
            t0 = time.perf_counter()
            v = embedder.embed([q])[0]
            t1 = time.perf_counter()
            _, best = cache.search(v, "ctx", q)
            t2 = time.perf_counter()
            embed_s.append(t1 - t0), search_s.append(t2 - t1), total_s.append(t2 - t0)
            vectors_of[q], best_of[q] = v, best
        for q in block:  # the exhaustive float32 search of the same vectors
            t0 = time.perf_counter()
            exact, _ = flat32.search(vectors_of[q].reshape(1, -1), 8)
            flat_s.append(time.perf_counter() - t0)
            errors.append(abs(best_of[q] - float(exact[0][0])))
        for q in block:  # the same questions through PyTorch eager, for the ratio
            t0 = time.perf_counter()
            torch_embed(q)
            torch_s.append(time.perf_counter() - t0)
    ms = lambda xs, q: float(np.percentile(xs, q) * 1e3)
    return {
        "entries": len(cache), "queries": queries, "answer_chars": answer_chars,
        "lookup_p50_ms": ms(total_s, 50), "lookup_p99_ms": ms(total_s, 99),
        "embed_p50_ms": ms(embed_s, 50), "embed_p99_ms": ms(embed_s, 99),
        "search_p50_ms": ms(search_s, 50), "search_p99_ms": ms(search_s, 99),
        **_by_length(questions, embed_s, embedder),
        "pytorch_embed_p50_ms": ms(torch_s, 50), "pytorch_embed_p99_ms": ms(torch_s, 99),
        **_semantic_recall(cache, vectors_real, rng),
        "flat32_search_p50_ms": ms(flat_s, 50), "flat32_search_p99_ms": ms(flat_s, 99), "fp16_max_similarity_error": max(errors),
        "rss_bytes_per_entry": per_entry, "accounted_bytes_per_entry": cache.bytes / len(cache),
        **_matmul_share(embedder, questions), **_tokenizer_cost(embedder, questions),
    }


# ---- report ----------------------------------------------------------------------

def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform()}


def _sections_note(results: dict) -> str:
    dates = results.get("section_dates")
    if not dates:
        return "all in one run"
    legacy = {"1-4": "classify, overhead, batching, adaptive", "5": "caches"}  # how earlier reports named them
    when = "; ".join(f"{legacy.get(k, k)} on {v}" for k, v in sorted(dates.items(), key=lambda kv: kv[1]))
    return (f"sections re-measured separately with `python -m benchmarks --only SECTION` ({when}; "
            "each section's comparisons are side by side within its run)")


def _in_router_line(r: dict) -> str:
    one, two = r["threads_1"], r["threads_2"]
    return (f"- Inside the running router ({r['entries']:,} entries, one caller, idle engines, {r['requests_per_setting']} misses per setting, "
            f"alternating blocks), `timings.cache_ms` with one embedding thread: p50 **{one['lookup_p50_ms']:.1f} ms**, p99 "
            f"**{one['lookup_p99_ms']:.1f} ms** (TTFT p50 {one['ttft_p50_ms']:.0f} ms); with two: p50 {two['lookup_p50_ms']:.1f} ms, "
            f"p99 {two['lookup_p99_ms']:.1f} ms (TTFT p50 {two['ttft_p50_ms']:.0f} ms). This adds the hop to the embedding thread "
            "and shares the process with gRPC and the engines' clients; vLLM pins both CPU engines to core 0 and leaves core 1 to the router.")


def _added(o: dict, q: int, digits: int = 1) -> str:
    """An added TTFT percentile, with its bootstrap interval when the run recorded one."""
    text = f"{o[f'added_ttft_p{q}_ms']:+.{digits}f} ms"
    ci = o.get(f"added_ttft_p{q}_ci_ms")
    return text + (f" (95 % interval {ci[0]:+.{digits}f} to {ci[1]:+.{digits}f})" if ci else "")


def _classify_ratio_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.classify_handler --ratios` (its own run)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    return [f"Where the gap to the ceiling is (`python -m benchmarks.classify_handler --ratios`, {r['date']}, {r['concurrency']} callers, "
            f"{r['rounds']} alternating rounds per row, each row its own server): Classify's rate against Health/Check with the handler "
            "cut down step by step.", "",
            "| Classify handler | Classify req/s | Health/Check req/s | ratio |", "|---|---|---|---|",
            *[f"| {v['variant']} | {v['classify_rps']:.0f} | {v['health_rps']:.0f} | {v['ratio']:.3f} |" for v in r["rows"]], ""]


def _own_text(o: dict) -> str:
    """The per-request time outside the engine's own time to first token, when the run recorded it."""
    if "own_p99_ms" not in o:
        return ""
    p50, p99 = o["own_p50_ms"], o["own_p99_ms"]
    if p99["direct"] == 0:  # a remote front: all of the direct path's TTFT is the server's
        return (f"; per request, the router path's time outside its own wait on the server (the direct path has none): "
                f"**p50 {p50['router']:.2f} ms, p99 {p99['router']:.2f} ms**")
    return (f"; outside the engine's own time to first token, per request: router path p50 {p50['router']:.2f} / p99 {p99['router']:.2f} ms, "
            f"direct path p50 {p50['direct']:.2f} / p99 {p99['direct']:.2f} ms, so the router adds **p50 {o['added_own_p50_ms']:+.2f} ms, "
            f"p99 {o['added_own_p99_ms']:+.2f} ms**")


def _overhead_lines(levels: dict) -> list[str]:
    if "router" in levels:  # a report from before levels: one level, 4
        levels = {str(levels["setup"]["concurrency"]): levels}
    gc_full = levels.get("full_collection_ms")
    levels = {c: o for c, o in levels.items() if c != "full_collection_ms"}
    lines = ["## 2. Router overhead (streaming, same engine, interleaved rounds)", "",
             "| concurrency | path | requests | tokens/s | TTFT p50 ms | TTFT p99 ms |", "|---|---|---|---|---|---|"]
    for c, o in levels.items():
        lines += [f"| {c} | {k} | {o[k]['requests']} | {o[k]['tokens_per_s']:.1f} | {o[k]['ttft_p50_ms']:.1f} | {o[k]['ttft_p99_ms']:.1f} |"
                  for k in ("router", "direct")]
    lines.append("")
    for c, o in levels.items():
        lag = o.get("loop_lag")
        lag_text = (f"; the event loop ran {lag['ticks']:.0f} lag ticks, {lag['share_over_5ms']:.1%} of them over 5 ms late, "
                    f"99th percentile within {lag['p99_bucket_s'] * 1e3:g} ms") if lag else ""
        gc_text = ""
        if o.get("gc"):
            gc_text = (f"; {o['gc']['collections']:.0f} garbage collections took {o['gc']['seconds'] * 1e3:.0f} ms in all, the longest "
                       f"within {o['gc']['max_bucket_s'] * 1e3:g} ms")
        lines.append(f"- Concurrency {c}: throughput ratio router/direct **{o['throughput_ratio']:.3f}** (target ≥ 0.95); added TTFT p50 "
                     f"**{_added(o, 50)}**, p99 **{_added(o, 99)}** (target: p99 under 5 ms){_own_text(o)}{lag_text}{gc_text}.")
    if any("own_p99_ms" in o for o in levels.values()):
        lines.append("- How to read these: the end-to-end percentiles compare two sets of requests, each meeting the engine's batches its "
                     "own way, so at p99 their 95 % intervals span tens of milliseconds and cannot resolve a few. The per-request figure "
                     "subtracts each request's own engine time to first token (the router reports it as `ttft_ms - routing_ms`; the "
                     "direct path times it around `engine.generate`), leaving what the path itself added: on the router path the gRPC "
                     "hop both ways, validation, classification, cache and render; on the direct path the render.")
    if gc_full:
        lines.append(f"- A full garbage collection in the server's process, measured in the same run: {gc_full['unfrozen']:.1f} ms with "
                     f"everything on the heap collectable (as before 2026-11-26), {gc_full['frozen']:.1f} ms with the "
                     f"{gc_full['tracked_objects_frozen']:,} objects alive after start-up frozen (`server/stalls.py`, as the server now runs).")
    any_level = next(iter(levels.values()))
    auto = Path(__file__).resolve().parents[1] / "docs/overhead-auto-cores.json"
    if auto.is_file():  # the same section with vLLM's default binding, for where the added time comes from
        a = json.loads(auto.read_text())
        lines += ["", f"The same section with both engines on core 0 (vLLM's `auto`, {a['date']}; `python -m benchmarks --only overhead "
                  "--config CONFIG` with `cpu_cores: auto`, results in docs/overhead-auto-cores.json):"]
        lines += [f"- Concurrency {c}: ratio {o['throughput_ratio']:.3f}; added TTFT p50 {o['added_ttft_p50_ms']:+.1f} ms, p99 "
                  f"{o['added_ttft_p99_ms']:+.1f} ms; loop lag over 5 ms in {o['loop_lag']['share_over_5ms']:.1%} of ticks."
                  for c, o in a["overhead"].items() if c != "full_collection_ms"]
    client = any_level["setup"].get("client", "the server's process and event loop")
    lines += ["", f"{any_level['setup']['max_tokens']} new tokens, greedy. The router path's gRPC client runs in {client}; the direct "
              "path calls the same in-process engine (render, generate) from the benchmark's event loop.", ""]
    return lines


def _cores_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.cores` (its own run, its own date)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    s = r["setup"]
    lines = ["## 7. Cores: where the CPU engines compute (`tiers.*.cpu_cores`)", "",
             f"Measured {r['date']} by `python -m benchmarks.cores` ({r['rounds']} rounds, settings in alternating order, engines "
             f"started afresh for each): streaming, {s['max_tokens']} new tokens, {s['requests_per_caller']} requests per caller; "
             f"mixed = {s['per_tier_callers']} callers on each tier, one tier = {2 * s['per_tier_callers']} callers on the small tier.", "",
             "| setting (small, large) | mixed tokens/s | × auto | mixed TTFT p50 ms | one tier tokens/s | × auto | one tier TTFT p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["settings"].items():
        m, o = v["mixed"], v["one_tier"]
        lines.append(f"| {name}: {v['cores'][0]}, {v['cores'][1]} | {m['tokens_per_s']:.1f} | {m['tokens_per_s_vs_auto']:.2f} | "
                     f"{m['ttft_p50_ms']:.0f} | {o['tokens_per_s']:.1f} | {o['tokens_per_s_vs_auto']:.2f} | {o['ttft_p50_ms']:.0f} |")
    return lines + [""]


def _remote_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.remote` (its own run, its own date)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    lines = ["## 8. A light front: both tiers remote, against the same `vllm serve` called directly", "",
             f"Measured {r['date']} by `python -m benchmarks.remote`: the router in its own process with both tiers on one "
             "`vllm serve` (SmolLM2, CPU build) and the semantic cache off; direct = `/v1/chat/completions` on the same server with "
             f"the same messages; streaming, greedy, alternating blocks. Router resident memory once SERVING and idle: "
             f"**{r['router_idle_rss_mb']:.0f} MB** (target: under 350 MB); torch, transformers or vLLM mapped into it: "
             f"{', '.join(r['router_imports']) or 'none'}.", "",
             "| concurrency | router TTFT p50 / p99 ms | direct TTFT p50 / p99 ms | added p50 / p99 ms | throughput ratio |", "|---|---|---|---|---|"]
    for c, v in r["levels"].items():
        lines.append(f"| {c} | {v['router']['ttft_p50_ms']:.1f} / {v['router']['ttft_p99_ms']:.1f} | {v['direct']['ttft_p50_ms']:.1f} / "
                     f"{v['direct']['ttft_p99_ms']:.1f} | {_added(v, 50, 2)} / {_added(v, 99, 2)} | {v['throughput_ratio']:.3f} |")
    lines += [""] + [f"- Concurrency {c}{_own_text(v)}." for c, v in r["levels"].items() if "own_p99_ms" in v]
    instant = path.parent / "remote-instant.json"
    if instant.is_file():
        i = json.loads(instant.read_text())
        lines += ["", f"The same run against an upstream that answers at once (`python -m benchmarks.remote --instant-upstream`, {i['date']}): "
                  "no engine time, and no engine process competing for the cores, so this is the router's own cost on the remote path."]
        lines += [f"- Concurrency {c}: {v['router']['tokens_per_s']:,.0f} tokens/s through the router against {v['direct']['tokens_per_s']:,.0f} "
                  f"direct (ratio {v['throughput_ratio']:.2f}); router TTFT p50 {v['router']['ttft_p50_ms']:.2f} ms against direct "
                  f"{v['direct']['ttft_p50_ms']:.2f} ms, added {_added(v, 50, 2)}; p99 added {_added(v, 99, 2)}{_own_text(v)}."
                  for c, v in i["levels"].items()]
    any_level = next(iter(r["levels"].values()))
    lines += ["", f"{any_level['router']['requests']} requests per path at one caller. The intervals are 95 % bootstrap intervals of the "
              "difference: how far the samples alone could move it. The direct path is read with aiohttp, the router's own upstream "
              "client (`python -m benchmarks.upstream_client`: the first event of a stream 1.1 ms sooner than with httpx)."]
    return lines + [""]


def _smg_lines(path: Path) -> list[str]:
    """Section 10, from `python -m benchmarks.smg` (its own command: it starts a worker and a gateway)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    rows = [f"| {c} | {v['direct']['ttft_p50_ms']:.1f} | {v['gateway']['ttft_p50_ms']:.1f} | {v['added_ttft_p50_ms']:+.1f} | "
            f"{v['direct']['ttft_p99_ms']:.1f} | {v['gateway']['ttft_p99_ms']:.1f} | {v['added_ttft_p99_ms']:+.1f} |" for c, v in r["levels"].items()]
    return ["## 10. The SMG path against its worker called directly", "",
            f"Measured {r['date']} with `python -m benchmarks.smg`: one vLLM gRPC CPU worker (core 1) behind SMG 1.13.0; the same "
            f"questions, {r['max_tokens']} new tokens, streamed, through SMG's chat completions (what a `backend: smg` tier sends) and "
            f"straight to the worker's gRPC `Generate` from token ids rendered in the caller, in {r['rounds']} alternating rounds of "
            f"{r['per_block']} per path.", "",
            "| concurrency | direct TTFT p50 ms | through SMG p50 ms | added p50 | direct p99 | through SMG p99 | added p99 |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def write_markdown(results: dict, path: Path) -> None:
    m, c, o, b, a = results["machine"], results["classify"], results["overhead"], results["batching"], results["adaptive"]
    lines = [
        "# Benchmarks", "",
        f"Measured {results['date']} by `make bench` (`python -m benchmarks --config {results['config']}`), "
        f"{_sections_note(results)} on {m['cores']} cores ({m['cpu']}), profile `{results['profile']}`: both tiers serve "
        "SmolLM2-135M-Instruct on vLLM's CPU build (the tiers differ only in budgets, see config/cpu.yaml). "
        "Machines here are noisy: compare the ratios, which were measured side by side; absolute numbers move run to run.", "",
        "Raw numbers: `docs/benchmarks.json`.", "",
        "## 1. Classify RPC (client in a separate process)", "",
        "| concurrency | Classify req/s | p50 ms | p99 ms | Health.Check req/s (ceiling) | Check p99 ms | Classify / ceiling |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['health_ceiling']['rps']:.0f} | "
          f"{r['health_ceiling']['p99_ms']:.2f} | {r['ratio_to_ceiling']:.2f} |" for r in c],
        "", "Targets at 32 concurrent callers: at least 2,000 requests/s with p99 under 10 ms, and at least 0.90 of the ceiling. The ceiling column is "
        "`grpc.health.v1.Health/Check`, the cheapest RPC on the same server, measured the same way in the same run: "
        "what a Python grpc.aio server and client on these 2 cores cost before any router work. Each row is the median of "
        "alternating Classify and Health/Check blocks when the run recorded several (`ratios_by_round` in the JSON).", "",
        *_classify_ratio_lines(path.parent / "classify-ratios.json"),
        *_overhead_lines(o),
        "## 3. Continuous batching (small tier, streaming, 64 new tokens)", "",
        "| concurrency | generated tokens/s | × concurrency 1 |", "|---|---|---|",
        *[f"| {k} | {v['tokens_per_s']:.1f} | {v['scaling_vs_c1']:.2f} |" for k, v in b.items()], "",
        "## 4. Adaptive routing against always-large (built-in mix, tier default budgets, concurrency 4)", "",
        "| policy | requests | mean ms | p95 ms | share routed small | tokens |", "|---|---|---|---|---|---|",
        *[f"| {k} | {a[k]['requests']} | {a[k]['mean_ms']:.0f} | {a[k]['p95_ms']:.0f} | {a[k]['small_share']:.0%} | {a[k]['tokens']} |" for k in ("adaptive", "always_large")],
        "",
        f"Adaptive/always-large: mean latency ×{a['mean_latency_ratio']:.2f}, p95 ×{a['p95_latency_ratio']:.2f}. On this CPU "
        "profile both tiers run the same model on the same two cores: routing can only save the large tier's bigger token "
        "budget (max_tokens 256 vs 128), and splitting concurrent requests across two engines costs batching, which is "
        "why adaptive need not win here. The comparison that matters is the GPU profile, where the small tier is a 5× "
        "smaller model; it cannot be measured on these machines.", "",
        "## 5. Caches", "",
        f"- Exact hit through gRPC (`Generate`, one caller in a separate process, {results['cache_exact']['requests']} requests): "
        f"p50 **{results['cache_exact']['hit']['p50_ms']:.2f} ms**, p99 **{results['cache_exact']['hit']['p99_ms']:.2f} ms** (target: p99 under 2 ms); "
        f"interleaved on the same channel, `Health/Check` took p50 {results['cache_exact']['health']['p50_ms']:.2f} ms, "
        f"p99 {results['cache_exact']['health']['p99_ms']:.2f} ms (the cost of any unary RPC here). "
        f"The miss that filled it took {results['cache_exact']['miss_ms']:.0f} ms.",
        f"- Semantic lookup with {results['cache_semantic']['entries']:,} entries (embed the question with all-MiniLM-L6-v2 in ONNX Runtime on one "
        f"thread; candidates from 48-byte sign codes in a faiss IndexBinaryFlat, rescored exactly on float16 vectors; guards), {results['cache_semantic']['queries']} questions: p50 "
        f"**{results['cache_semantic']['lookup_p50_ms']:.1f} ms**, p99 **{results['cache_semantic']['lookup_p99_ms']:.1f} ms** "
        f"(target: p99 under 15 ms); of which embedding p50 {results['cache_semantic']['embed_p50_ms']:.1f} / p99 "
        f"{results['cache_semantic']['embed_p99_ms']:.1f} ms (ONNX Runtime: median {results['cache_semantic']['embed_short_p50_ms']:.1f} ms for the "
        f"{results['cache_semantic']['short_questions']} questions of at most {results['cache_semantic']['length_split_tokens']} tokens, "
        f"{results['cache_semantic']['embed_long_p50_ms']:.1f} ms for the {results['cache_semantic']['long_questions']} longer ones, up to "
        f"{results['cache_semantic']['long_max_tokens']} tokens, so the p99 is the long questions; the same questions through PyTorch eager, "
        f"in alternating blocks: p50 {results['cache_semantic']['pytorch_embed_p50_ms']:.1f} / p99 {results['cache_semantic']['pytorch_embed_p99_ms']:.1f} ms) and search p50 {results['cache_semantic']['search_p50_ms']:.1f} / p99 "
        f"{results['cache_semantic']['search_p99_ms']:.1f} ms. Measured in one thread of a process with the engines stopped: the lookup itself. "
        f"ONNX Runtime's profiler, same questions: {results['cache_semantic']['matmul_share']:.0%} of the embedding's kernel time is matrix "
        f"products, which run at {results['cache_semantic']['matmul_gflops']:.0f} GFLOP/s on one core. Tokenising a question takes p50 "
        f"{results['cache_semantic']['tokenize_p50_ms']:.2f} ms with the `tokenizers` library, {results['cache_semantic']['transformers_tokenize_p50_ms']:.2f} ms "
        "through transformers' wrapper (what the embedder used before 2026-11-23).",
        _in_router_line(results["cache_in_router"]),
        f"- Memory per semantic entry ({results['cache_semantic']['answer_chars']}-character answers): "
        f"{results['cache_semantic']['rss_bytes_per_entry']:.0f} bytes of resident memory measured while filling "
        f"(the cache's own accounting says {results['cache_semantic']['accounted_bytes_per_entry']:.0f}: 768 for the float16 vector, 48 for its sign code, "
        "the answer text, and Python object overhead it does not count).",
        f"- Candidate recall: {results['cache_semantic']['recall']:.3f} of {results['cache_semantic']['recall_queries']} "
        f"paraphrase-like queries (cosine ≥ 0.951 to a stored real question, among {results['cache_semantic']['recall_among_real']:,} "
        f"real questions and the random rest) found their entry through the binary candidates.",
        f"- The same search done exhaustively over float32 vectors (`IndexFlatIP`, one thread), same entries and questions, "
        f"in alternating blocks: p50 {results['cache_semantic']['flat32_search_p50_ms']:.1f} / p99 {results['cache_semantic']['flat32_search_p99_ms']:.1f} ms; "
        f"the largest difference between its best similarity and the cache's was {results['cache_semantic']['fp16_max_similarity_error']:.5f}.", "",
        *(_overlap_lines(results["overlap"]) if "overlap" in results else []),
        *_cores_lines(path.parent / "cores.json"),
        *_remote_lines(path.parent / "remote.json"),
        *spill_lines(results.get("spill"), results.get("section_dates", {}).get("spill", results["date"])),
        *_smg_lines(path.parent / "smg.json"),
        *_http_lines(results.get("http"), results.get("section_dates", {}).get("http", results["date"])),
        "Plots from the load generator: `triage bench --concurrency 1,4,16 --stream --out reports/bench` "
        "(latency per tier, throughput against concurrency).", "",
        "## Reproduce", "", "```sh", "make bench                      # sections 1-6, 8, 9 and 11, about 50 minutes on 2 cores",
        "python -m benchmarks --only overhead,overlap   # some sections, updating the report",
        "python -m benchmarks.cores      # section 7, about 15 minutes", "python -m benchmarks.remote     # section 8, about 12 minutes",
        "python -m benchmarks.classify_handler --ratios  # section 1's decomposition, about 2 minutes",
        "python -m benchmarks.upstream_client  # httpx against aiohttp as a tier's upstream client, seconds",
        "python -m benchmarks.smg        # section 10, about 4 minutes",
        "python -m benchmarks.shutdown   # stop time of an idle server", "```", "",
    ]
    path.write_text("\n".join(lines))


SECTIONS = {  # name: the result keys it writes
    "classify": ("classify",), "overhead": ("overhead",), "batching": ("batching",), "adaptive": ("adaptive",),
    "caches": ("cache_exact", "cache_in_router", "cache_semantic"), "overlap": ("overlap",), "spill": ("spill",),
    "http": ("http",),
}


async def main_async(args, sections: list[str]) -> dict:
    import classifier
    from server.app import build_app
    from server.config import load

    config = load(args.config).with_ports(0, -1, http_port=0)
    app = build_app(config, classifier.load(config.classifier.path))
    await app.server.start()
    await app.start_http()
    address = f"{config.server.host}:{app.port}"
    print(f"starting engines ({address})…", flush=True)
    await app.start_engines()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "config": args.config, "profile": config.profile, "machine": machine()}
    try:
        if "classify" in sections:
            print("1. Classify RPC", flush=True)
            results["classify"] = await asyncio.to_thread(classify_bench, address)
        if "overhead" in sections:
            print("2. router overhead", flush=True)
            results["overhead"] = await overhead_bench(app, address)
        if "batching" in sections:
            print("3. continuous batching", flush=True)
            results["batching"] = await batching_bench(address)
        if "adaptive" in sections:
            print("4. adaptive against always-large", flush=True)
            results["adaptive"] = await adaptive_bench(address)
        if "caches" in sections:
            print("5. caches", flush=True)
            results["cache_exact"] = await exact_hit_bench(address)
            print(f"  exact hit p99 {results['cache_exact']['hit']['p99_ms']:.2f} ms", flush=True)
            results["cache_in_router"] = await in_router_lookup_bench(app, address)
            r = results["cache_in_router"]
            print(f"  in the router: lookup p99 {r['threads_1']['lookup_p99_ms']:.1f} ms (1 thread), {r['threads_2']['lookup_p99_ms']:.1f} ms (2)", flush=True)
        if "overlap" in sections:
            print("6. semantic search beside the engine request", flush=True)
            results["overlap"] = r = await overlap_bench(app, address)
            print(f"  added miss TTFT p99 {r['added_miss_ttft_p99_ms']:+.1f} ms (sequential {r['added_miss_ttft_p99_ms_sequential']:+.1f}), "
                  f"hit p99 {r['hit_e2e']['overlap']['p99_ms']:.1f} ms, mix throughput x{r['mix_throughput_ratio']:.3f}", flush=True)
        if "http" in sections:
            print("11. OpenAI-compatible HTTP beside gRPC", flush=True)
            results["http"] = await http_bench(app, address)
        if "spill" in sections:
            print("9. spill under load", flush=True)
            results["spill"] = r = await spill_bench(app, address)
            print(f"  other callers' TTFT p95: spill on / off x{r['p95_ratio_on_to_off']:.2f}", flush=True)
    finally:
        await app.stop(grace=5)
    if "caches" in sections:
        # In process, engines stopped, so the machine is as quiet as it gets.
        results["cache_semantic"] = await asyncio.to_thread(semantic_bench)
        print(f"  semantic lookup p99 {results['cache_semantic']['lookup_p99_ms']:.1f} ms at {results['cache_semantic']['entries']} entries", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cpu.yaml")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--only", help=f"comma-separated sections to re-measure ({', '.join(SECTIONS)}), updating them in an existing report")
    parser.add_argument("--render", action="store_true", help="measure nothing: rewrite benchmarks.md from the JSON results in --out")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.render:
        write_markdown(json.loads((Path(args.out) / "benchmarks.json").read_text()), Path(args.out) / "benchmarks.md")
        return 0
    sections = list(SECTIONS) if not args.only else args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    results = asyncio.run(main_async(args, sections))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only:  # the other sections keep their numbers, and the report says when each was measured
        previous = json.loads((out / "benchmarks.json").read_text())
        dates = previous.setdefault("section_dates", {})
        for name in sections:
            dates[name] = results["date"]
            previous.update({k: results[k] for k in SECTIONS[name]})
        results = previous
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "benchmarks.md")
    print(f"wrote {out / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
