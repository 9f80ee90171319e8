"""Fair share under a flood (server/callers/, server/tiers/admission.py),
on the real CPU engines, side by side in one run:

    python -m benchmarks.callers_flood [--flood 60] [--questions 8] [--every 3] [--out docs]

A router on config/cpu.yaml (caches off) and two callers named by their
bearer tokens: `batch` keeps FLOOD streams open on the small tier (each
asks again as soon as its answer ends; those refused at the full queue
retry after a second) while `chat` asks a short question every EVERY
seconds and times its first token. Three blocks:

1. chat alone: the idle router;
2. chat beside the flood, callers configured (fair share and headroom);
3. chat beside the flood, the same router restarted without `callers`:
   every request one caller, the first-come queue of before.

Per block: chat's first-token p50 and max, from its first attempt (a
question refused at the full queue is asked again a second later, as a
client with retries would), their ratio to idle, and chat's refusals; the
flood's answers per second (what fair share costs it). The flood runs in
its own process (a client must not share the router's cores' GIL with
the caller it measures). Writes callers_flood.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from clients import AsyncTriageClient, ResourceExhaustedError

from .harness import start_router
from .remote import ROOT

TOKENS = {"chat": "bench-chat-token-0123456789", "batch": "bench-batch-token-0123456789"}
ENV = "TRIAGE_BENCH_CALLER_TOKENS"
QUESTION = "What is the capital of France?"


def _client(address: str, caller: str) -> AsyncTriageClient:
    return AsyncTriageClient(address, timeout=600, metadata=(("authorization", f"Bearer {TOKENS[caller]}"),))


async def _flood(address: str, streams: int, stop, answers) -> None:
    client = _client(address, "batch")

    async def one(i: int) -> None:
        while not stop.is_set():
            try:
                async for _ in client.generate_stream(f"Write a poem about the sea, number {i}.", route="small", max_tokens=64):
                    pass
                with answers.get_lock():
                    answers.value += 1
            except ResourceExhaustedError:
                await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    while not stop.is_set():
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()


def _flood_process(address: str, streams: int, stop, answers) -> None:
    asyncio.run(_flood(address, streams, stop, answers))


GIVE_UP_S = 60.0  # a question still refused after this long counts as this long, and as given up


async def _chat(address: str, questions: int, every_s: float) -> tuple[list[float], int, int]:
    """Chat's first-token times, from its first attempt: a question refused
    at a full queue is asked again after the retry hint (1 s), as a client
    with retries would; how many times it was refused, and how many
    questions it gave up on after GIVE_UP_S."""
    client = _client(address, "chat")
    firsts, refused, given_up = [], 0, 0
    for _ in range(questions):
        started = time.perf_counter()
        first = None
        while first is None:
            if time.perf_counter() - started > GIVE_UP_S:
                first, given_up = GIVE_UP_S, given_up + 1
                break
            try:
                async for event in client.generate_stream(QUESTION, route="small", max_tokens=16):
                    if first is None and event.WhichOneof("event") == "delta":
                        first = time.perf_counter() - started
            except ResourceExhaustedError:
                refused += 1
                await asyncio.sleep(1.0)
        firsts.append(first)
        await asyncio.sleep(every_s)
    await client.close()
    return firsts, refused, given_up


def _block(address: str, flood: int, questions: int, every_s: float) -> dict:
    spawn = mp.get_context("spawn")
    stop, answers = spawn.Event(), spawn.Value("i", 0)
    flooder = None
    if flood:
        flooder = spawn.Process(target=_flood_process, args=(address, flood, stop, answers))
        flooder.start()
        time.sleep(5.0)  # the flood holds its slots and fills the queue
    started = time.perf_counter()
    firsts, refused, given_up = asyncio.run(_chat(address, questions, every_s))
    elapsed = time.perf_counter() - started
    if flooder is not None:
        stop.set()
        flooder.join(60)
    ms = [f * 1e3 for f in firsts]
    return {"chat_ttft_ms": ms, "p50_ms": statistics.median(ms), "max_ms": max(ms), "chat_refused": refused, "chat_given_up": given_up,
            "flood_answers_per_s": answers.value / elapsed}


def _router(callers: bool, log):
    """With callers, the tokens name them; without, the same tokens name no one (a name would be refused)."""
    overrides = ["cache.exact=false", "cache.semantic=false", f"security.token_env={ENV}"]
    os.environ[ENV] = ",".join(f"{name}:{token}" if callers else token for name, token in TOKENS.items())
    if callers:
        overrides.append("callers=[{name: chat}, {name: batch}]")
    return start_router(ROOT / "config/cpu.yaml", log, http=False, overrides=tuple(overrides))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callers_flood")
    parser.add_argument("--flood", type=int, default=60)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "flood": args.flood, "questions": args.questions}
    with tempfile.TemporaryFile("w+") as log:
        for callers, blocks in ((True, ("idle", "fair_share")), (False, ("first_come",))):
            router = _router(callers, log)
            try:
                for name in blocks:
                    print(f"{name}…", flush=True)
                    results[name] = _block(router.address, 0 if name == "idle" else args.flood, args.questions, args.every)
                    r = results[name]
                    print(f"  chat's first token p50 {r['p50_ms']:.0f} ms, max {r['max_ms']:.0f} ms, refused {r['chat_refused']} times, "
                          f"gave up on {r['chat_given_up']} after {GIVE_UP_S:.0f} s; "
                          f"the flood's answers/s {r['flood_answers_per_s']:.2f}", flush=True)
            finally:
                router.proc.terminate()
                router.proc.wait(60)
    idle = results["idle"]["p50_ms"]
    for name in ("fair_share", "first_come"):
        results[name]["p50_vs_idle"] = results[name]["p50_ms"] / idle
        results[name]["max_vs_idle_p50"] = results[name]["max_ms"] / idle
    print(f"chat beside a flood of {args.flood} streams, first token p50 against idle's {idle:.0f} ms: "
          f"fair share ×{results['fair_share']['p50_vs_idle']:.2f} (max ×{results['fair_share']['max_vs_idle_p50']:.2f}), "
          f"first come ×{results['first_come']['p50_vs_idle']:.2f} (max ×{results['first_come']['max_vs_idle_p50']:.2f})")
    out = Path(args.out) / "callers_flood.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
