"""Section 9 of `make bench`: spill under load, on and off in one run.

A burst of simple questions floods the small tier (BURST callers, each
sending the next question as soon as the last is answered) while OTHER
callers send their own questions through GenerateStream and time their first
token. With spill on, burst and other questions near the cut point move to
the large tier while the small one is busy; with it off they queue. Blocks of
spill off and spill on alternate (ABAB...) so drift hits both alike; the
loads run in a child process, as a client would (client and server must not
share one GIL):

    python -m benchmarks --only spill
    python -m benchmarks.spill load ADDRESS BURST OTHER PER_CALLER   # one block's load (JSON out)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time

import numpy as np

from clients import AsyncTriageClient

from .load import STAGGER_S
from .questions import simple_question

BURST, OTHER, PER_CALLER, MAX_TOKENS = 24, 4, 10, 32


async def block_load(address: str, burst: int, other: int, per_caller: int, seed: int) -> dict:
    """One block: the burst runs until every other caller has sent
    `per_caller` questions; each other question's TTFT, and where every
    answered request went."""
    rng = random.Random(seed)
    done = asyncio.Event()
    routed: list[tuple[str, str, str]] = []  # (who, tier, reason)
    ttft: list[float] = []
    async with AsyncTriageClient(address, timeout=600) as client:
        await client.health()

        async def flood(k: int):
            while not done.is_set():
                r = await client.generate(simple_question(rng), max_tokens=MAX_TOKENS, cache="off")
                routed.append(("burst", r.decision.tier_name, r.decision.reason))

        async def steady(k: int):
            await asyncio.sleep(2.0 + k * STAGGER_S)  # the burst has filled the small tier
            for _ in range(per_caller):
                question = simple_question(rng)
                decision = {}

                async def one():
                    async for event in client.generate_stream(question, max_tokens=MAX_TOKENS, cache="off"):
                        if event.WhichOneof("event") == "decision":
                            decision["d"] = event.decision
                        yield event

                started, first = time.perf_counter(), None
                async for event in one():
                    if event.WhichOneof("event") == "delta" and first is None:
                        first = time.perf_counter() - started
                ttft.append(first)
                routed.append(("other", decision["d"].tier_name, decision["d"].reason))

        started = time.perf_counter()
        flooders = [asyncio.create_task(flood(k)) for k in range(burst)]
        await asyncio.gather(*(steady(k) for k in range(other)))
        wall = time.perf_counter() - started
        done.set()
        for task in flooders:  # an unfinished burst request is cancelled (the engine aborts it)
            task.cancel()
        await asyncio.gather(*flooders, return_exceptions=True)
    ms = np.array(ttft) * 1e3
    count = lambda who, what: sum(1 for w, tier, reason in routed if w == who and what in (tier, reason))  # noqa: E731
    return {"wall_s": wall, "other_ttft_ms": ms.tolist(), "other_p50_ms": float(np.percentile(ms, 50)), "other_p95_ms": float(np.percentile(ms, 95)),
            "burst_answered": count("burst", "small") + count("burst", "large"), "burst_spilled": count("burst", "load"),
            "other_spilled": count("other", "load"), "other_large": count("other", "large")}


async def _wait_idle(app, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while any(t.gate.in_flight or t.engine.unfinished_requests() for t in app.tiers) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def spill_bench(app, address: str, rounds: int = 3, margin: float = 0.2, queue_seconds: float = 0.25) -> dict:
    """Alternating blocks, spill off then on (then on, off, ...), with the
    profile's spill settings but `margin` (the generated simple questions
    score either well below or above the cut; 0.2 puts about a quarter of
    them within reach) and `queue_seconds`: with a 2 s budget this section
    measured ×1.01 (2026-11-26): by the time the expected wait passed it, the
    other callers' first tokens were already 3-5 s late."""
    from server.config import SpillConfig

    configured = app.router.spill if app.router.spill.enabled else SpillConfig()
    settings = {"off": dataclasses.replace(configured, enabled=False),
                "on": dataclasses.replace(configured, enabled=True, margin=margin, queue_seconds=queue_seconds)}
    blocks: dict[str, list[dict]] = {"off": [], "on": []}
    for i in range(2 * rounds):
        name = ("off", "on")[(i + i // 2) % 2]  # off on on off off on ...
        app.router.spill = settings[name]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.spill", "load", address, str(BURST), str(OTHER), str(PER_CALLER), "--seed", str(i),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the spill load failed with exit code {proc.returncode}")
        blocks[name].append(json.loads(out))
        b = blocks[name][-1]
        print(f"  block {i + 1} spill {name}: other callers' TTFT p95 {b['other_p95_ms']:.0f} ms, "
              f"{b['burst_spilled']} burst and {b['other_spilled']} other requests spilled", flush=True)
        await _wait_idle(app)
    app.router.spill = configured
    out = {"setup": {"burst_callers": BURST, "other_callers": OTHER, "per_caller": PER_CALLER, "max_tokens": MAX_TOKENS,
                     "rounds": rounds, "margin": margin, "queue_seconds": queue_seconds, "up": configured.up, "down": configured.down}}
    for name, bs in blocks.items():
        ms = np.concatenate([b["other_ttft_ms"] for b in bs])
        out[name] = {"other_requests": int(ms.size), "other_ttft_p50_ms": float(np.percentile(ms, 50)),
                     "other_ttft_p95_ms": float(np.percentile(ms, 95)), "burst_answered": sum(b["burst_answered"] for b in bs),
                     "burst_per_s": sum(b["burst_answered"] for b in bs) / sum(b["wall_s"] for b in bs),
                     "burst_spilled": sum(b["burst_spilled"] for b in bs), "other_spilled": sum(b["other_spilled"] for b in bs)}
    out["p95_ratio_on_to_off"] = out["on"]["other_ttft_p95_ms"] / out["off"]["other_ttft_p95_ms"]
    out["p50_ratio_on_to_off"] = out["on"]["other_ttft_p50_ms"] / out["off"]["other_ttft_p50_ms"]
    out["burst_rate_ratio_on_to_off"] = out["on"]["burst_per_s"] / out["off"]["burst_per_s"]
    return out


def spill_lines(r: dict | None, date: str) -> list[str]:
    if not r:
        return []
    s = r["setup"]
    rows = [f"| {name} | {r[name]['other_requests']} | {r[name]['other_ttft_p50_ms']:.0f} | {r[name]['other_ttft_p95_ms']:.0f} | "
            f"{r[name]['burst_per_s']:.2f} | {r[name]['burst_spilled']} of {r[name]['burst_answered']} | {r[name]['other_spilled']} |"
            for name in ("off", "on")]
    return [
        "## 9. Spill under load (a burst on the small tier)", "",
        f"Measured {date} with `python -m benchmarks --only spill`. {s['burst_callers']} callers flood the small tier with simple "
        f"questions while {s['other_callers']} other callers each stream {s['per_caller']} questions of the same kind and time their "
        f"first token; {s['max_tokens']} new tokens each; {s['rounds']} blocks with spill off and {s['rounds']} with spill on, "
        f"alternating; spill margin {s['margin']}, budget {s['queue_seconds']} s, upward only.", "",
        "| spill | other requests | other TTFT p50 ms | other TTFT p95 ms | burst answered/s | burst spilled | other spilled |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Spill on / off: other callers' TTFT p95 ×{r['p95_ratio_on_to_off']:.2f}, p50 ×{r['p50_ratio_on_to_off']:.2f}; "
        f"the burst's own rate ×{r['burst_rate_ratio_on_to_off']:.2f}. The spilled requests run on the large tier's engine (its own core), "
        "which the burst otherwise leaves mostly idle.", "",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.spill")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load", help="one block's load against a running router (JSON on stdout)")
    p.add_argument("address")
    p.add_argument("burst", type=int)
    p.add_argument("other", type=int)
    p.add_argument("per_caller", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(block_load(args.address, args.burst, args.other, args.per_caller, args.seed))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
