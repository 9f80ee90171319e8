"""What the CPU profile's engines cost while they generate, and what a
/metrics scrape costs meanwhile: the router on config/cpu.yaml (both tiers
in process, each on its own core), once with vLLM's spinning queue readers
(TRIAGE_VLLM_SPIN=1) and once without (server/tiers/engine.py,
quiet_message_queues), in one run:

- one tier busy: the cores each kind of vLLM process used (EngineCore,
  Worker; from /proc) during one long answer of the small tier, and its
  tokens/s;
- both tiers busy: each tier's tokens/s with the other generating too;
- scraping /metrics ten times a second during a small-tier answer: the
  answer's time against the same answer unscraped, each scrape's time, and
  the series a scrape carries.

    python -m benchmarks.engine_spin [--tokens 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

from clients import TriageClient

from .harness import processes, start_router

ROOT = Path(__file__).resolve().parents[1]
STORY = "Write a long story about a lighthouse keeper and a storm, with many details."


def _vllm_cpu(router_pid: int) -> dict[str, float]:
    """CPU seconds so far of the router's vLLM processes, by kind."""
    out: dict[str, float] = {}
    for child in psutil.Process(router_pid).children(recursive=True):
        try:
            name = " ".join(child.cmdline())[:40] or child.name()
            kind = "EngineCore" if "EngineCore" in name else "Worker" if "Worker" in name else None
            if kind:
                t = child.cpu_times()
                out[kind] = out.get(kind, 0.0) + t.user + t.system
        except psutil.Error:
            continue
    return out


def _answer(client: TriageClient, tier: str, tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    r = client.generate(STORY, route=tier, cache="off", max_tokens=tokens)
    return time.perf_counter() - started, r.usage.completion_tokens


def one_busy(client, pid: int, tokens: int) -> dict:
    before = _vllm_cpu(pid)
    seconds, n = _answer(client, "small", tokens)
    after = _vllm_cpu(pid)
    return {"tokens_per_s": round(n / seconds, 1), "cores": {k: round((after[k] - before.get(k, 0.0)) / seconds, 2) for k in after}}


def both_busy(address: str, tokens: int) -> dict:
    results = {}

    def run(tier):
        with TriageClient(address, timeout=600) as c:
            seconds, n = _answer(c, tier, tokens)
            results[tier] = round(n / seconds, 1)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("small", "large")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def scraped(client, metrics_url: str, tokens: int) -> dict:
    alone, _ = _answer(client, "small", tokens)
    times, stop = [], threading.Event()

    def scrape():
        while not stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(metrics_url, timeout=60) as r:
                body = r.read()
            times.append(time.perf_counter() - started)
            stop.wait(0.1)
        scrape.series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))

    thread = threading.Thread(target=scrape)
    thread.start()
    with_scrapes, _ = _answer(client, "small", tokens)
    stop.set()
    thread.join()
    ms = np.array(times) * 1e3
    return {"answer_s_alone": round(alone, 2), "answer_s_scraped": round(with_scrapes, 2), "scrapes": len(times),
            "scrape_ms_p50": round(float(np.percentile(ms, 50)), 1), "scrape_ms_max": round(float(ms.max()), 1),
            "series": scrape.series}


def measure(spin: bool, tokens: int, log) -> dict:
    env_before = os.environ.get("TRIAGE_VLLM_SPIN")
    os.environ["TRIAGE_VLLM_SPIN"] = "1" if spin else "0"  # the router's vLLM processes inherit it
    try:
        with processes() as started:
            router = start_router(ROOT / "config/cpu.yaml", log, http=False, metrics=True)
            started.append(router.proc)
            with TriageClient(router.address, timeout=600) as client:
                _answer(client, "small", 16)  # warm
                time.sleep(2)  # past vLLM's 1 s of spinning after the warm-up's last message
                idle_before = _vllm_cpu(router.proc.pid)
                time.sleep(3)
                idle = {k: round((v - idle_before.get(k, 0.0)) / 3, 2) for k, v in _vllm_cpu(router.proc.pid).items()}
                report = {"idle_cores": idle, "one_tier_busy": one_busy(client, router.proc.pid, tokens)}
                print("  one tier busy:", report["one_tier_busy"], file=sys.stderr, flush=True)
                report["both_tiers_busy_tokens_per_s"] = both_busy(router.address, tokens)
                print("  both busy:", report["both_tiers_busy_tokens_per_s"], file=sys.stderr, flush=True)
                report["scraping"] = scraped(client, router.metrics, tokens)
                return report
    finally:
        if env_before is None:
            os.environ.pop("TRIAGE_VLLM_SPIN", None)
        else:
            os.environ["TRIAGE_VLLM_SPIN"] = env_before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    report = {}
    with open(os.devnull, "w") as log:
        for name, spin in (("spinning", True), ("quiet", False)):
            report[name] = measure(spin, args.tokens, log)
            print(name, json.dumps(report[name]), flush=True)
    s, q = report["spinning"], report["quiet"]
    report["ratios_quiet_over_spinning"] = {
        "one_tier_tokens_per_s": round(q["one_tier_busy"]["tokens_per_s"] / s["one_tier_busy"]["tokens_per_s"], 3),
        "both_small_tokens_per_s": round(q["both_tiers_busy_tokens_per_s"]["small"] / s["both_tiers_busy_tokens_per_s"]["small"], 3),
        "both_large_tokens_per_s": round(q["both_tiers_busy_tokens_per_s"]["large"] / s["both_tiers_busy_tokens_per_s"]["large"], 3),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        (args.out / "engine_spin.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
