"""Where the CPU engines compute: each setting of the tiers' `cpu_cores`
under mixed small/large traffic and under one-tier traffic, in one run.

    python -m benchmarks.cores [--config config/cpu.yaml] [--rounds 2] [--out docs]

Each round starts the router with every setting in turn (engines started
afresh each time) and runs the same two workloads, streaming, greedy:
- mixed: `per_tier` callers on the small tier and as many on the large one;
- one tier: twice `per_tier` callers, all on the small tier.
It prints generated tokens/s and TTFT per setting and workload, and writes
`cores.json` beside the other benchmark results; docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path


from clients import AsyncTriageClient

from .load import streamed, summarise_blocks

# (small, large): vLLM's default; each engine its own core; both on both.
SETTINGS = {"auto (both on core 0)": ("auto", "auto"), "own core each (0 | 1)": ("0", "1"), "both on both (0-1)": ("0-1", "0-1")}
PROMPT = "Write a short paragraph about the history of tea."


async def _workload(address: str, routes: list[str], requests_per_caller: int, max_tokens: int) -> dict:
    ttft, tokens = [], 0
    async with AsyncTriageClient(address, timeout=600) as client:
        async def caller(i: int, route: str):
            nonlocal tokens
            for j in range(requests_per_caller):
                first, _, n = await streamed(client, f"{PROMPT} ({i}-{j})", max_tokens, route=route)
                ttft.append(first)
                tokens += n

        started = time.perf_counter()
        await asyncio.gather(*(caller(i, r) for i, r in enumerate(routes)))
        wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "ttft_s": ttft}


async def _one_setting(config, cores: tuple[str, str], per_tier: int, requests_per_caller: int, max_tokens: int) -> dict:
    import classifier
    from server.app import build_app

    small, large = list(config.tiers)[:2]
    tiers = dict(config.tiers)
    tiers[small] = dataclasses.replace(tiers[small], cpu_cores=cores[0])
    tiers[large] = dataclasses.replace(tiers[large], cpu_cores=cores[1])
    app = build_app(dataclasses.replace(config, tiers=tiers), classifier.load(config.classifier.path))
    await app.server.start()
    address = f"{config.server.host}:{app.port}"
    await app.start_engines()
    try:
        mixed = await _workload(address, [small] * per_tier + [large] * per_tier, requests_per_caller, max_tokens)
        one = await _workload(address, [small] * (2 * per_tier), requests_per_caller, max_tokens)
    finally:
        await app.stop(grace=5)
    return {"mixed": mixed, "one_tier": one}


async def main_async(args) -> dict:
    from server.config import load

    config = load(args.config).with_ports(0, -1)
    raw: dict[str, dict[str, list]] = {name: {"mixed": [], "one_tier": []} for name in SETTINGS}
    for i in range(args.rounds):
        names = list(SETTINGS) if i % 2 == 0 else list(SETTINGS)[::-1]  # drift hits every setting alike
        for name in names:
            print(f"round {i + 1}: {name}", flush=True)
            out = await _one_setting(config, SETTINGS[name], args.per_tier, args.requests, args.max_tokens)
            for workload, run in out.items():
                raw[name][workload].append(run)
                print(f"  {workload}: {run['tokens'] / run['wall_s']:.1f} tokens/s", flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "config": args.config, "rounds": args.rounds,
              "setup": {"per_tier_callers": args.per_tier, "requests_per_caller": args.requests, "max_tokens": args.max_tokens},
              "settings": {name: {"cores": SETTINGS[name], **{w: summarise_blocks(runs) for w, runs in by_workload.items()}}
                           for name, by_workload in raw.items()}}
    base = result["settings"]["auto (both on core 0)"]
    for s in result["settings"].values():
        for w in ("mixed", "one_tier"):
            s[w]["tokens_per_s_vs_auto"] = s[w]["tokens_per_s"] / base[w]["tokens_per_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cores", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cpu.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-tier", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2, help="requests per caller")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(main_async(args))
    print(json.dumps({n: {w: round(s[w]["tokens_per_s_vs_auto"], 3) for w in ("mixed", "one_tier")} for n, s in result["settings"].items()}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cores.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
