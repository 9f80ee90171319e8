"""Shadow evaluation under load: with the capable tier saturated, shadows
are dropped and counted, and live first tokens are no later than with
shadowing off. One run, alternating routers:

    python -m benchmarks.shadow [--rounds 2] [--seconds 45] [--out docs]

Each round starts the router on the CPU profile twice, with
`routing.shadow` off and then on (sample 1.0: every answer is a
candidate), and runs the same load against each for `--seconds`: callers
that keep the large tier busy (`--large-callers` streams, back to back)
and callers on the small tier (`--small-callers`), whose answers would be
shadowed up to the large tier. Prints per setting the live time to first
token (p50/p99) on each tier, the answers per second, the ratio on/off,
and the shadows sent, dropped and preempted. Writes `shadow.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from clients import AsyncTriageClient

from .harness import start_router
from .remote import ROOT
from .soak import _total, scrape

SETTINGS = {"off": "routing.shadow={enabled: false}", "on": "routing.shadow={enabled: true, sample: 1.0}"}


async def _load(address: str, seconds: float, large_callers: int, small_callers: int) -> dict:
    ttft = {"small": [], "large": []}
    done = {"small": 0, "large": 0}
    stop = time.monotonic() + seconds

    async def caller(client, tier: str, i: int, max_tokens: int):
        n = 0
        while time.monotonic() < stop:
            n += 1
            started = time.perf_counter()
            first = None
            async for event in client.generate_stream(f"Question {i}-{n}: name something {tier} and blue.", route=tier,
                                                      max_tokens=max_tokens, cache="off"):
                if first is None and event.WhichOneof("event") == "delta":
                    first = time.perf_counter() - started
            ttft[tier].append(first if first is not None else float("nan"))
            done[tier] += 1

    async with AsyncTriageClient(address, timeout=300) as client:
        await asyncio.gather(*(caller(client, "large", i, 48) for i in range(large_callers)),
                             *(caller(client, "small", i, 16) for i in range(small_callers)))
    return {tier: {"ttft_s": ttft[tier], "answers": done[tier]} for tier in ttft} | {"seconds": seconds}


def _block(setting: str, args) -> dict:
    with open(Path(args.log_dir) / f"router-{setting}.log", "a") as log:
        router, address, _, metrics = start_router(ROOT / "config/cpu.yaml", log, http=False, metrics=True, overrides=(SETTINGS[setting],))
    try:
        out = asyncio.run(_load(address, args.seconds, args.large_callers, args.small_callers))
        time.sleep(1.0)
        m = scrape(metrics)
        out["shadows"] = {r: _total(m, "router_shadow_requests_total", result=r) for r in ("sent", "dropped", "preempted", "agreed", "disagreed")}
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(timeout=120)
    return out


def _summary(blocks: list[dict]) -> dict:
    out = {}
    for tier in ("small", "large"):
        t = np.array([x for b in blocks for x in b[tier]["ttft_s"]]) * 1e3
        out[tier] = {"ttft_p50_ms": float(np.nanpercentile(t, 50)), "ttft_p99_ms": float(np.nanpercentile(t, 99)),
                     "answers_per_s": sum(b[tier]["answers"] for b in blocks) / sum(b["seconds"] for b in blocks)}
    out["shadows"] = {r: sum(b["shadows"][r] for b in blocks) for r in blocks[0]["shadows"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=45.0)
    p.add_argument("--large-callers", type=int, default=4)
    p.add_argument("--small-callers", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--log-dir", default="/tmp")
    args = p.parse_args(argv)
    blocks = {"off": [], "on": []}
    for r in range(args.rounds):
        for setting in (("off", "on") if r % 2 == 0 else ("on", "off")):
            blocks[setting].append(_block(setting, args))
            print(f"round {r + 1}: shadowing {setting} done", flush=True)
    result = {s: _summary(b) for s, b in blocks.items()}
    print("| shadowing | small TTFT p50 / p99 ms | large TTFT p50 / p99 ms | answers/s small / large | shadows sent / dropped / preempted |")
    print("|---|---|---|---|---|")
    for s, r in result.items():
        sh = r["shadows"]
        print(f"| {s} | {r['small']['ttft_p50_ms']:.0f} / {r['small']['ttft_p99_ms']:.0f} | {r['large']['ttft_p50_ms']:.0f} / "
              f"{r['large']['ttft_p99_ms']:.0f} | {r['small']['answers_per_s']:.2f} / {r['large']['answers_per_s']:.2f} | "
              f"{sh['sent']:.0f} / {sh['dropped']:.0f} / {sh['preempted']:.0f} |")
    for tier in ("small", "large"):
        on, off = result["on"][tier], result["off"][tier]
        print(f"{tier}: TTFT on/off p50 x{on['ttft_p50_ms'] / off['ttft_p50_ms']:.3f}, p99 x{on['ttft_p99_ms'] / off['ttft_p99_ms']:.3f}")
    Path(args.out, "shadow.json").write_text(json.dumps({"args": vars(args), "result": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
