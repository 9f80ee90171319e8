"""The router at a GPU's pace: hundreds of streams against a simulated H200
(benchmarks/simulated_vllm.py), beside direct clients, in one run:

    python -m benchmarks.gpu_pace [--levels 32,128,256,512] [--rounds 3] [--max-tokens 64]
                                  [--load-procs 2] [--arrivals burst|spread] [--out docs]

Starts the simulator and the router as their own processes (both tiers
`remote` on the simulator, caches off), and load processes that each hold
an equal part of the streams. Per level, in alternating blocks (direct,
gRPC front, HTTP front; the order turns each round), every stream asks
`--requests` streamed questions one after the other, each answered with
`--max-tokens` tokens. With `--arrivals burst` (the default) a block's
streams all start at once, so the router takes a burst of that many new
requests in one moment; with `spread`, each stream starts at its own
moment (the same on every path) within one answer's time, as the streams
of a server that is already busy come and go. Per path and level:

- output tokens/s and its ratio to direct;
- time to first token p50/p99, and what the router adds to it;
- inter-token gap p99 (between two deltas of one answer) and what the
  router adds to it;
- the router process's CPU share (cores) and its CPU milliseconds per
  1,000 streamed tokens, from /proc before and after each block;
- the load processes' busiest CPU share, so a saturated client shows.

The direct path and the HTTP front are read by the same client code (one
OpenAI-style chat completion stream); the gRPC front by the project's
AsyncTriageClient. Writes `gpu_pace.json`; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from .remote import MODEL, MODEL_DIR, ROOT, _free_port, _healthy, _wait
from .harness import cpu_seconds, grpc_stream, processes, router_config, router_pids, sse_stream, start_router
from .simulated_vllm import H200

LITELLM_KEY = "sk-gpu-pace-benchmark-only"  # its proxy refuses to start without one
PATHS = ("direct", "grpc", "http")  # with --against, also grpc_old and http_old; with --workers N, grpc_wN and http_wN; with --litellm, litellm
# gRPC connections per load process and router (--channels): the kernel
# spreads connections, not calls, over a router's workers
# (server/workers.py), and a fleet of clients holds many.
CHANNELS = 8


# ---- the processes under test ---------------------------------------------------

def _start_litellm(exe: str, url: str, folder: Path, log) -> tuple[subprocess.Popen, str]:
    """LiteLLM's proxy (one worker, its defaults) in front of the same
    simulator, serving it as model "small"; its chat completions URL."""
    config = folder / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "small", "litellm_params": {
        "model": f"hosted_vllm/{MODEL}", "api_base": f"{url}/v1", "api_key": "none"}}], "general_settings": {"master_key": LITELLM_KEY}}))
    port = _free_port()
    proc = subprocess.Popen([str(Path(exe).resolve()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LITELLM_LOG": "ERROR"})
    _wait(lambda: _healthy(f"http://127.0.0.1:{port}/health/liveliness", ""), 300, "LiteLLM's proxy")
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


# ---- the load processes -----------------------------------------------------------

async def _block(ends: dict, clients: dict, path: str, streams: int, requests: int, max_tokens: int, offset: int, interval: int,
                 spread_s: float = 0.0) -> dict:
    async def one(n: int):
        prompt = f"Question {n}: what is {n} plus {n + 1}?"  # never the same twice
        if path.startswith("grpc"):
            connections = clients[path]
            return await grpc_stream(connections[n % len(connections)], prompt, max_tokens)
        headers = {"Authorization": f"Bearer {LITELLM_KEY}"} if path == "litellm" else None
        direct = path == "direct"
        return await sse_stream(clients["http"], ends[path], MODEL if direct else "small", prompt, max_tokens, headers,
                                 {"stream_interval": interval} if direct and interval > 1 else None)

    errors: list[str] = []

    async def stream(s: int):
        out = []
        if spread_s:  # the same moment for stream s on every path
            await asyncio.sleep(random.Random(s).uniform(0.0, spread_s))
        for r in range(requests):
            try:
                out.append(await one(offset + s * requests + r))
            except Exception as exc:  # counted and shown, never a stopped benchmark
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return out

    started = time.perf_counter()
    cpu0 = time.process_time()
    out = [x for per in await asyncio.gather(*(stream(s) for s in range(streams))) for x in per]
    wall = time.perf_counter() - started
    gaps = [b - a for _, arrivals, _ in out for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": [o[0] for o in out], "gaps": gaps, "tokens": sum(o[2] for o in out), "start": started, "wall": wall,
            "cpu": time.process_time() - cpu0, "errors": errors, "messages": sum(len(o[1]) for o in out), "answers": len(out)}


def _load_process(conn, ends: dict, channels: int = CHANNELS) -> None:
    """A load process: CHANNELS gRPC connections per router and one HTTP
    session, then blocks as the parent asks, each started at the parent's
    wall-clock moment."""
    import aiohttp
    import grpc

    from clients import AsyncTriageClient

    def connection(address: str) -> AsyncTriageClient:
        # Its own subchannel: channels to one address otherwise share one connection.
        channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        return AsyncTriageClient(address, timeout=600, channel=channel)

    async def main():
        grpc_clients = {p: [connection(address) for _ in range(channels)] for p, address in ends.items() if p.startswith("grpc")}
        async with aiohttp.ClientSession(
                # An idle connection is dropped after 2 s, before the servers close theirs (uvicorn, under LiteLLM: 5 s).
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0), timeout=aiohttp.ClientTimeout(total=600)) as http:
            clients = {"http": http, **grpc_clients}
            while (job := await asyncio.to_thread(conn.recv)) is not None:
                path, streams, requests, max_tokens, offset, at, interval, spread_s = job
                await asyncio.sleep(max(0.0, at - time.time()))
                conn.send(await _block(ends, clients, path, streams, requests, max_tokens, offset, interval, spread_s))
        for connections in grpc_clients.values():
            for client in connections:
                await client.close()

    import uvloop

    uvloop.run(main())


# ---- one level --------------------------------------------------------------------

def _run_block(loaders: list, pids: tuple[int, ...], sim_pid: int, path: str, streams: int, requests: int, max_tokens: int, offset: int,
               interval: int = 1, spread_s: float = 0.0) -> dict:
    """One block on every load process at once; `pids`: the router
    processes whose CPU it costs (none: direct), `sim_pid`: the simulator's."""
    share = [streams // len(loaders) + (i < streams % len(loaders)) for i in range(len(loaders))]
    at = time.time() + 0.3
    cpu0, sim0 = sum(map(cpu_seconds, pids)), cpu_seconds(sim_pid)
    for i, (conn, _) in enumerate(loaders):
        conn.send((path, share[i], requests, max_tokens, offset + i * 100_000, at, interval, spread_s))
    parts = [conn.recv() for conn, _ in loaders]
    router_cpu = sum(map(cpu_seconds, pids)) - cpu0
    wall = max(p["start"] + p["wall"] for p in parts) - min(p["start"] for p in parts)
    return {"wall_s": wall, "tokens": sum(p["tokens"] for p in parts), "ttft_s": [t for p in parts for t in p["ttft"]],
            "gaps_s": [g for p in parts for g in p["gaps"]], "router_cpu_s": router_cpu, "sim_cpu_s": cpu_seconds(sim_pid) - sim0,
            "errors": [e for p in parts for e in p["errors"]], "messages": sum(p["messages"] for p in parts),
            "answers": sum(p["answers"] for p in parts), "load_cpu_share": max(p["cpu"] / p["wall"] for p in parts)}


def _summary(blocks: list[dict]) -> dict:
    wall, tokens, cpu = sum(b["wall_s"] for b in blocks), sum(b["tokens"] for b in blocks), sum(b["router_cpu_s"] for b in blocks)
    ttft = np.array([t for b in blocks for t in b["ttft_s"]]) * 1e3
    gaps = np.array([g for b in blocks for g in b["gaps_s"]]) * 1e3
    return {"tokens_per_s": tokens / wall, "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p99_ms": float(np.percentile(ttft, 99)),
            "gap_p50_ms": float(np.percentile(gaps, 50)), "gap_p99_ms": float(np.percentile(gaps, 99)),
            "router_cores": cpu / wall, "router_cpu_ms_per_1k_tokens": 1e6 * cpu / tokens if tokens else float("nan"),
            "load_cpu_share_max": max(b["load_cpu_share"] for b in blocks), "sim_cores": sum(b["sim_cpu_s"] for b in blocks) / wall,
            "tokens": tokens, "errors": len([e for b in blocks for e in b["errors"]]),
            # messages with text per answer: the text merged while a write is behind (server/fronts/merging.py)
            "messages_per_answer": sum(b["messages"] for b in blocks) / max(1, sum(b["answers"] for b in blocks)),
            "first_errors": [e for b in blocks for e in b["errors"]][:3]}


def _level(loaders, pids: dict, sim_pid: int, streams: int, rounds: int, requests: int, max_tokens: int, interval: int = 1,
           spread: bool = False) -> dict:
    """Every path in `pids` (direct: no router process), in alternating blocks.
    `spread`: each stream starts at its own moment within one answer's
    time at the pace, as streams of a busy server start, instead of all at
    once (a burst of `streams` new requests)."""
    spread_s = max_tokens * H200.step_seconds(min(streams, H200.max_num_seqs)) if spread else 0.0
    paths = list(pids)
    blocks: dict[str, list[dict]] = {p: [] for p in paths}
    for p in paths:  # warm: channels, connections
        if p != "direct":
            _run_block(loaders, (), sim_pid, p, min(streams, 64), 1, 8, 9_000_000)
    offset = 0
    for r in range(rounds):
        for path in (paths if r % 2 == 0 else paths[::-1]):
            offset += 1_000_000
            blocks[path].append(_run_block(loaders, pids[path], sim_pid, path, streams, requests, max_tokens, offset, interval, spread_s))
    out = {p: _summary(b) for p, b in blocks.items()}
    direct = out.get("direct")
    if direct:
        direct["model_tokens_per_s"] = H200.tokens_per_second(streams)
        for p in paths[1:]:
            s = out[p]
            s["throughput_ratio"] = s["tokens_per_s"] / direct["tokens_per_s"]
            s["added_ttft_p50_ms"] = s["ttft_p50_ms"] - direct["ttft_p50_ms"]
            s["added_ttft_p99_ms"] = s["ttft_p99_ms"] - direct["ttft_p99_ms"]
            s["added_gap_p99_ms"] = s["gap_p99_ms"] - direct["gap_p99_ms"]
    return out


def _print_level(streams: int, r: dict) -> None:
    if "direct" not in r:
        print(f"{streams} streams: {json.dumps(r)}", flush=True)
        return
    d = r["direct"]
    print(f"{streams} streams: direct {d['tokens_per_s']:.0f} tokens/s (the pace's model: {d['model_tokens_per_s']:.0f} while all stream), "
          f"TTFT p50 {d['ttft_p50_ms']:.1f} ms, gap p99 {d['gap_p99_ms']:.1f} ms; simulator {d['sim_cores']:.2f} cores, "
          f"load procs at most {d['load_cpu_share_max']:.2f}", flush=True)
    for p, s in r.items():
        if p != "direct":
            print(f"  {p:9s}: x{s['throughput_ratio']:.3f} of direct, added TTFT p50 {s['added_ttft_p50_ms']:+.1f} / p99 {s['added_ttft_p99_ms']:+.1f} ms, "
                  f"added gap p99 {s['added_gap_p99_ms']:+.1f} ms, router {s['router_cores']:.2f} cores, "
                  f"{s['router_cpu_ms_per_1k_tokens']:.0f} ms CPU per 1,000 tokens, {s['messages_per_answer']:.1f} messages an answer "
                  f"(load procs at most {s['load_cpu_share_max']:.2f} cores)"
                  + (f"; {s['errors']} failed requests, e.g. {s['first_errors'][0]}" if s["errors"] else ""),
                  flush=True)


def _tree_at(rev: str, folder: Path) -> Path:
    """The router's code and profile as they are at git revision `rev`."""
    tree = folder / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "server", "classifier", "clients", "triage_proto", "config"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _knows_stream_interval(tree: Path) -> bool:
    """Whether the router's code in `tree` has tiers.*.stream_interval (an
    older tree is measured with one token per event)."""
    return "stream_interval" in (tree / "server/config.py").read_text()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_pace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="32,128,256,512")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2, help="streamed questions per stream and block, one after the other")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS), help="a subset, e.g. grpc alone while profiling the router")
    parser.add_argument("--against", metavar="REV", help="also a router running the code of git revision REV, its paths beside these")
    parser.add_argument("--workers", type=int, default=1, help="also a router of this many processes on one port "
                                                                   "(server.workers), its paths grpc_wN and http_wN beside these")
    parser.add_argument("--channels", type=int, default=CHANNELS, help="gRPC connections per load process and router")
    parser.add_argument("--stream-interval", type=int, default=1, help="tokens per streamed event after the first (vLLM's "
                                                                           "stream_interval): direct clients ask the simulator for it, the "
                                                                           "router's tiers are set to it (an --against revision's "
                                                                           "too, if its code has the setting)")
    parser.add_argument("--litellm", metavar="EXE", help="also LiteLLM's proxy (this `litellm` executable, from its own venv: "
                                                          "make litellm-env) in front of the same simulator")
    parser.add_argument("--arrivals", choices=("burst", "spread"), default="burst",
                        help="burst: a block's streams all start at once; spread: each at its own moment within one answer's time")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--name", default="gpu_pace.json", help="the result's file name in --out")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pace": H200.__dict__, "max_tokens": args.max_tokens,
              "rounds": args.rounds, "requests_per_stream": args.requests, "load_procs": args.load_procs, "cores": os.cpu_count(), "against": args.against,
              "workers": args.workers, "grpc_connections_per_load_proc": args.channels, "stream_interval": args.stream_interval,
              "arrivals": args.arrivals,
              "levels": {}}
    with tempfile.TemporaryDirectory() as tmp, processes() as procs:
        tmp = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.simulated_vllm", str(port), str(MODEL_DIR), MODEL, "--pace", "h200"],
                                      cwd=ROOT, stdout=(tmp / "sim.log").open("w"), stderr=subprocess.STDOUT))
        _wait(lambda: _healthy(url), 120, "the simulator")
        ends, pids = {"direct": f"{url}/v1/chat/completions"}, {"direct": ()}
        routers = {"": (ROOT, 1), **({"_old": (_tree_at(args.against, tmp), 1)} if args.against else {}),
                   **({f"_w{args.workers}": (ROOT, args.workers)} if args.workers > 1 else {})}
        for suffix, (tree, workers) in routers.items():
            config = router_config(url, tmp, max(levels), tree, args.stream_interval if _knows_stream_interval(tree) else 1)
            router, address, http, _ = start_router(config, (tmp / f"router{suffix}.log").open("w"), tree, workers=workers)
            procs.append(router)
            for path, end in (("grpc", address), ("http", f"{http}/v1/chat/completions")):
                if path in args.paths.split(","):
                    ends[path + suffix], pids[path + suffix] = end, router_pids(router, workers)
        if args.litellm:
            proc, ends["litellm"] = _start_litellm(args.litellm, url, tmp, (tmp / "litellm.log").open("w"))
            procs.append(proc)
            pids["litellm"] = (proc.pid,)
        if "direct" not in args.paths.split(","):
            del ends["direct"], pids["direct"]
        ctx = mp.get_context("spawn")
        loaders = []
        try:
            for _ in range(args.load_procs):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_load_process, args=(child, ends, args.channels), daemon=True)
                proc.start()
                loaders.append((parent, proc))
            for streams in levels:
                r = result["levels"][str(streams)] = _level(loaders, pids, procs[0].pid, streams, args.rounds, args.requests, args.max_tokens,
                                                            args.stream_interval, args.arrivals == "spread")
                _print_level(streams, r)
        finally:
            for conn, proc in loaders:
                with contextlib.suppress(OSError):
                    conn.send(None)
                proc.join(10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / args.name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
