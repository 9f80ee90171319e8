"""A bounded asyncio load generator for the router (`triage bench`).

It talks only to the address it is given, keeps at most `concurrency`
requests open, stops after `requests` requests or `duration` seconds, shows a
progress bar, and writes report.json plus PNG plots.

    triage bench --address 127.0.0.1:50051 --concurrency 1,4,16 --requests 40 --stream --out reports/bench
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .client import AsyncTriageClient
from .errors import TriageError

# Built-in mix: half questions a small model answers, half that need more.
BUILTIN_MIX = [
    "What is the capital of France?",
    "who wrote pride and prejudice",
    "What is the boiling point of water in Celsius?",
    "how many legs does a spider have",
    "When did World War II end?",
    "what is the largest planet in the solar system",
    "Who painted the Mona Lisa?",
    "what currency is used in japan",
    "How can I improve my time management skills?",
    "Write a short poem about autumn leaves.",
    "Explain the difference between a list and a tuple in Python, with an example.",
    "A train travels 60 km in 45 minutes. At the same speed, how far does it travel in 2 hours? Explain your steps.",
    "What if the printing press had never been invented?",
    "Compare renewable and fossil energy sources in terms of cost and environmental impact.",
    "Draft a polite email declining a meeting invitation.",
    "Implement a function in Python that checks whether a string is a palindrome.",
]


@dataclass
class Sample:
    tier: str
    code: str
    e2e_s: float
    ttft_s: float | None
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0


def load_prompts(path: str | None) -> list[dict]:
    if path is None:
        return [{"text": t} for t in BUILTIN_MIX]
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                obj = json.loads(line)
                text = obj.get("text", obj.get("prompt"))
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{number}: expected a 'text' or 'prompt' field")
                prompts.append({"text": text, "route": obj.get("route")})
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


async def _one(client: AsyncTriageClient, prompt: dict, stream: bool, max_tokens: int | None, timeout: float, cache: str) -> Sample:
    started = time.perf_counter()
    kwargs = {"route": prompt.get("route"), "max_tokens": max_tokens, "timeout": timeout, "cache": cache}
    try:
        if not stream:
            r = await client.generate(prompt["text"], **kwargs)
            tier = r.decision.tier_name
            return Sample(tier, "OK", time.perf_counter() - started, r.timings.ttft_ms / 1e3, [], r.usage.completion_tokens)
        tier, ttft, last, gaps, tokens = "?", None, None, [], 0
        async for event in client.generate_stream(prompt["text"], **kwargs):
            kind = event.WhichOneof("event")
            now = time.perf_counter()
            if kind == "decision":
                tier = event.decision.tier_name
            elif kind == "delta":
                if ttft is None:
                    ttft = now - started
                elif last is not None:
                    gaps.append(now - last)
                last = now
            elif kind == "final":
                tokens = event.final.usage.completion_tokens
        return Sample(tier, "OK", time.perf_counter() - started, ttft, gaps, tokens)
    except TriageError as exc:
        return Sample("?", exc.code.name, time.perf_counter() - started, None)


async def run_level(address: str, prompts: Sequence[dict], concurrency: int, requests: int | None, duration: float | None,
                    stream: bool, max_tokens: int | None, timeout: float = 300.0, progress: bool = True,
                    cache: str = "default") -> tuple[list[Sample], float]:
    """One load level: `concurrency` workers share a request budget."""
    from tqdm import tqdm

    if requests is None and duration is None:
        raise ValueError("give a request count or a duration")
    samples: list[Sample] = []
    cycle = itertools.cycle(prompts)
    budget = itertools.count()
    started = time.perf_counter()
    stop_at = started + duration if duration else None
    bar = tqdm(total=requests, desc=f"c={concurrency}", unit="req", disable=not progress, leave=True)

    async with AsyncTriageClient(address, timeout=timeout) as client:
        async def worker():
            while True:
                if requests is not None and next(budget) >= requests:
                    return
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                samples.append(await _one(client, next(cycle), stream, max_tokens, timeout, cache))
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return samples, time.perf_counter() - started


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1e3) if len(values) else None


def summarise(samples: list[Sample], wall_s: float) -> dict:
    by_tier: dict[str, list[Sample]] = {}
    for s in samples:
        if s.code == "OK":
            by_tier.setdefault(s.tier, []).append(s)
    tiers = {}
    for tier, group in sorted(by_tier.items()):
        e2e = [s.e2e_s for s in group]
        ttft = [s.ttft_s for s in group if s.ttft_s is not None]
        itl = [g for s in group for g in s.itl_s]
        tokens = sum(s.completion_tokens for s in group)
        tiers[tier] = {
            "count": len(group), "rps": len(group) / wall_s,
            "ttft_ms": {"p50": _pct(ttft, 50), "p95": _pct(ttft, 95)},
            "inter_token_ms": {"p50": _pct(itl, 50), "p95": _pct(itl, 95)},
            "e2e_ms": {"p50": _pct(e2e, 50), "p95": _pct(e2e, 95), "p99": _pct(e2e, 99), "mean": float(np.mean(e2e) * 1e3)},
            "completion_tokens": tokens, "tokens_per_s": tokens / wall_s,
        }
    codes: dict[str, int] = {}
    for s in samples:
        codes[s.code] = codes.get(s.code, 0) + 1
    ok = [s for s in samples if s.code == "OK"]
    return {
        "requests": len(samples), "ok": len(ok), "wall_s": wall_s, "rps": len(ok) / wall_s if wall_s else 0.0,
        "tokens_per_s": sum(s.completion_tokens for s in ok) / wall_s if wall_s else 0.0,
        "codes": codes, "small_share": (sum(s.tier == "small" for s in ok) / len(ok)) if ok else None, "tiers": tiers,
    }


def plot(levels: dict[int, dict], samples: dict[int, list[Sample]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(levels)
    for tier in sorted({s.tier for s in samples[top]}):
        values = [s.e2e_s * 1e3 for s in samples[top] if s.code == "OK" and s.tier == tier]
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=f"{tier} (n={len(values)})")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"Latency per tier at concurrency {top}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_by_tier.png", dpi=100)
    files.append("latency_by_tier.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    cs = sorted(levels)
    ax.plot(cs, [levels[c]["rps"] for c in cs], marker="o", label="requests/s")
    ax2 = ax.twinx()
    ax2.plot(cs, [levels[c]["tokens_per_s"] for c in cs], marker="s", color="tab:orange", label="tokens/s")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("requests/s")
    ax2.set_ylabel("generated tokens/s")
    ax.set_title("Throughput against concurrency")
    fig.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=100)
    files.append("throughput_vs_concurrency.png")
    plt.close(fig)
    return files


async def bench(address: str, concurrency: Sequence[int], requests: int | None, duration: float | None, prompts_path: str | None,
                stream: bool, max_tokens: int | None, out: str | Path, progress: bool = True, cache: str = "default") -> dict:
    prompts = load_prompts(prompts_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    levels, all_samples = {}, {}
    for c in concurrency:
        samples, wall = await run_level(address, prompts, c, requests, duration, stream, max_tokens, progress=progress, cache=cache)
        levels[c] = summarise(samples, wall)
        all_samples[c] = samples
    report = {
        "address": address, "stream": stream, "max_tokens": max_tokens, "cache": cache, "prompts": prompts_path or "built-in mix",
        "levels": {str(c): v for c, v in levels.items()},
    }
    report["plots"] = plot(levels, all_samples, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
