"""`make bench` sections 5 and 6: the caches (exact hits, the semantic
lookup in and out of the router) and the semantic search beside the engine
request."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from clients import AsyncTriageClient
from clients.loadgen import BUILTIN_MIX

from .load import EXACT_QUESTION


def _child(*args: str) -> dict:
    """A load in a child process (benchmarks/load.py): client and server
    must not share one GIL."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "benchmarks.load", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


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
    from server.lookup.cache import CachedAnswer
    from server.lookup.embedding import Embedder
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
    from server.lookup.cache import CachedAnswer

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


def overlap_lines(r: dict) -> list[str]:
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

    from server.lookup.embedding import mean_pool
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

    from server.lookup.embedding import MAX_TOKENS, model_path

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

    from server.lookup.embedding import DIM, ONNX_DIR, ONNX_FILE

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
    from server.lookup.cache import CachedAnswer, SemanticCache
    from server.lookup.embedding import Embedder

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
