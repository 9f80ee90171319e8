"""`make bench` sections 3 and 4, through the router with the load
generator: continuous batching, and adaptive routing against always-large."""

from __future__ import annotations


import numpy as np

from clients.loadgen import BUILTIN_MIX, run_level, summarise



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
