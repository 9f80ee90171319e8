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
import sys
import time
from pathlib import Path



from .spill import spill_bench

from .caches import exact_hit_bench, in_router_lookup_bench, overlap_bench, semantic_bench
from .overhead import classify_bench, http_bench, overhead_bench
from .report import machine, write_markdown
from .through import adaptive_bench, batching_bench


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
