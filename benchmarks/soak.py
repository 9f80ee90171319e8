"""The router under hours of mixed traffic, with faults, watched for growth:

    python -m benchmarks.soak --minutes 35 [--warmup-minutes 10] [--workers 4] [--out docs]

Starts, as their own processes, a simulated vLLM server (benchmarks/
simulated_vllm.py at an H200's pace) and the router on the CPU profile with
a third tier, `gpu`, that is `remote` on the simulator. Then, for
`--minutes`:

- **traffic** from `--workers` callers, each picking one of ACTIONS at a
  time: gRPC and HTTP, unary and streamed, repeated questions (cache hits)
  and new ones (misses), streams the caller abandons after the first text,
  deadlines shorter than the answer, the remote tier, and Feedback on a
  share of the answers (kept as acknowledged when the RPC says OK);
- **faults** on a schedule (FAULTS): SIGKILL an in-process engine's
  processes (the router restarts it), SIGSTOP the simulator for a while
  (a stalled upstream) and SIGKILL it and start it again on the same port
  (reset connections). After each, the time until the tier answers again
  as itself (not degraded) is recorded;
- **samples** every `--sample-seconds`: the router process's RSS, open file
  descriptors and threads, its engine processes' RSS, the caches' entries
  and bytes and the remembered answers (from /metrics), the feedback
  store's rows (its SQLite file), and the calls by status (from /metrics).

At the end it prints each series' slope after warm-up and its growth over
the last 20 minutes, the faults and their recovery, and the accounting:
every call the callers made is counted once by the router, with the same
status where the caller learned one, and every acknowledged feedback row
is in the store. Writes `soak.json`; docs/reliability.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from clients import AsyncTriageClient, TriageError

from .harness import start_router
from .remote import MODEL, MODEL_DIR, ROOT, _free_port, _healthy, _wait

GPU_TIER = "gpu"
REPEATED = ["What is the capital of France?", "Name three primary colours.", "What is 2 plus 2?", "Who wrote Hamlet?",
            "What is the boiling point of water in Celsius?", "Name a mammal that can fly.", "What colour is the sky?",
            "How many days are in a week?"]
# (name, weight): what one caller does next.
ACTIONS = (("grpc_repeat", 3), ("grpc_new", 2), ("grpc_stream", 3), ("grpc_abandon", 1), ("grpc_deadline", 1),
           ("grpc_gpu", 2), ("http_repeat", 2), ("http_new", 1), ("http_stream", 2), ("http_abandon", 1), ("http_gpu", 1))
FEEDBACK_SHARE = 0.3  # of the answers that carry an id
# (minute, fault, target) for a 35-minute run; longer runs repeat it every FAULT_PERIOD minutes.
FAULTS = ((4, "kill", "small"), (8, "stall", GPU_TIER), (12, "kill", "large"), (16, "reset", GPU_TIER),
          (20, "kill", "small"), (24, "stall", GPU_TIER), (28, "kill", "large"), (32, "reset", GPU_TIER))
FAULT_PERIOD = 32
STALL_S = 20.0
# A caller that leaves after the first text: the router counts it CANCELLED,
# or OK when the answer was complete before the cancellation reached it.
ABANDONED = "abandoned"
HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
              429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


# ---- the processes ------------------------------------------------------------------

def _config(folder: Path, gpu_url: str) -> Path:
    """The CPU profile, a third tier remote on the simulator, small bounds
    on the caches and the remembered answers so that the soak reaches them,
    and a feedback store."""
    raw = yaml.safe_load((ROOT / "config/cpu.yaml").read_text())
    for tier in raw["tiers"].values():
        tier["model_path"] = str(MODEL_DIR)
    raw["tiers"][GPU_TIER] = {"model": MODEL, "model_path": str(MODEL_DIR), "backend": "remote", "replicas": [gpu_url],
                              "max_model_len": 4096, "max_in_flight": 32, "max_queued": 32, "max_queue_seconds": 30,
                              "generation_timeout_s": 60, "sampling": {"max_tokens": 64, "max_tokens_cap": 512, "stop": []}}
    raw["classifier"].update(threshold=None, cut_points=[0.5, 0.9])
    raw["cache"].update(exact_max_entries=300, semantic_max_entries=300)
    raw["feedback"].update(path=str(folder / "feedback.sqlite"), remember_answers=500)
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Upstream:
    """The simulator on a fixed port, so that a restarted one is the same replica."""

    def __init__(self, folder: Path):
        self.port, self.log = _free_port(), open(folder / "simulator.log", "a")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.simulated_vllm", str(self.port), str(MODEL_DIR), MODEL],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        _wait(lambda: _healthy(self.url), 120, "the simulator")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _engine_pids(log_path: Path, tier: str) -> list[int]:
    found = re.findall(rf"tier {tier}: engine loaded in [\d.]+ s \(processes \[([\d, ]+)\]\)", log_path.read_text())
    return [int(p) for p in found[-1].split(",")] if found else []


# ---- what the callers saw ------------------------------------------------------------

@dataclass
class Tally:
    """Every call the callers made, by the RPC it is counted under and what they learned."""

    calls: collections.Counter = field(default_factory=collections.Counter)  # (rpc, status) -> n
    acknowledged: set = field(default_factory=set)  # request ids whose feedback was answered OK
    latencies: dict = field(default_factory=lambda: collections.defaultdict(list))  # action -> seconds

    def saw(self, rpc: str, status: str) -> None:
        self.calls[(rpc, status)] += 1


def _status(exc: BaseException) -> str:
    if isinstance(exc, TriageError) and exc.code is not None:
        return exc.code.name
    return f"client:{type(exc).__name__}"


class Callers:
    """The traffic: gRPC through the project's client, HTTP with aiohttp."""

    def __init__(self, address: str, http_url: str, tally: Tally):
        self.address, self.http_url, self.tally = address, http_url, tally
        self._n = 0

    def _question(self) -> str:
        self._n += 1
        return f"In one short sentence: what is {self._n} plus {self._n * 7 % 97}?"

    async def run(self, workers: int, until: float) -> None:
        names, weights = zip(*ACTIONS)
        async with AsyncTriageClient(self.address, timeout=120) as grpc_client, aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=120)) as http:
            self.grpc = grpc_client
            async def worker(seed: int):
                rng = random.Random(seed)
                while time.monotonic() < until:
                    action = rng.choices(names, weights)[0]
                    started = time.monotonic()
                    await getattr(self, action)(grpc_client if action.startswith("grpc") else http, rng)
                    self.tally.latencies[action].append(time.monotonic() - started)

            await asyncio.gather(*(worker(i) for i in range(workers)))

    # gRPC ------------------------------------------------------------------------------

    async def _unary(self, client, rng, question: str, **kw) -> None:
        try:
            r = await client.generate(question, max_tokens=16, **kw)
        except TriageError as exc:
            return self.tally.saw("Generate", _status(exc))
        self.tally.saw("Generate", "OK")
        if rng.random() < FEEDBACK_SHARE:
            await self._feedback(client, r.request_id, rng)

    async def _feedback(self, client, request_id: str, rng) -> None:
        try:
            await client.feedback(request_id, correct=rng.random() < 0.5, label="soak")
        except TriageError as exc:
            return self.tally.saw("Feedback", _status(exc))
        self.tally.saw("Feedback", "OK")
        self.tally.acknowledged.add(request_id)

    async def grpc_repeat(self, client, rng):
        await self._unary(client, rng, rng.choice(REPEATED))

    async def grpc_new(self, client, rng):
        await self._unary(client, rng, self._question())

    async def grpc_deadline(self, client, rng):
        """A deadline shorter than the answer: DEADLINE_EXCEEDED, and the engine's request aborted."""
        try:
            await client.generate(self._question() + " Then write a long essay about it.", max_tokens=400, timeout=0.4)
            self.tally.saw("Generate", "OK")
        except TriageError as exc:
            self.tally.saw("Generate", _status(exc))

    async def _stream(self, client, question: str, abandon: bool = False, **kw) -> None:
        status = "OK"
        try:
            async for event in client.generate_stream(question, max_tokens=24, **kw):
                if abandon and event.WhichOneof("event") == "delta":
                    status = ABANDONED  # leaving the loop cancels the call (the client's finally)
                    break
        except TriageError as exc:
            status = _status(exc)
        self.tally.saw("GenerateStream", status)

    async def grpc_stream(self, client, rng):
        await self._stream(client, self._question() if rng.random() < 0.5 else rng.choice(REPEATED))

    async def grpc_abandon(self, client, rng):
        await self._stream(client, self._question(), abandon=True)

    async def grpc_gpu(self, client, rng):
        await self._stream(client, self._question(), route=GPU_TIER)

    # HTTP ------------------------------------------------------------------------------

    async def _post(self, http, rng, question: str, model: str = "auto", stream: bool = False, abandon: bool = False) -> None:
        request_id = f"soak-{os.getpid()}-{self._question_id()}"
        body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16 if not stream else 24,
                "stream": stream}
        try:
            async with http.post(f"{self.http_url}/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as resp:
                status = HTTP_CODES.get(resp.status, f"HTTP {resp.status}")
                if stream and resp.status == 200:
                    async for line in resp.content:
                        if abandon and line.startswith(b"data: {") and b'"content"' in line:
                            status = ABANDONED
                            resp.close()  # the caller goes away mid-stream
                            break
                        if line.startswith(b"data: {") and b'"error"' in line:
                            status = (json.loads(line[6:])["error"].get("code") or "stream error").upper()
                else:
                    await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = f"client:{type(exc).__name__}"
        self.tally.saw("http.chat_completions", status)
        if status == "OK" and not stream and rng.random() < FEEDBACK_SHARE:
            await self._feedback(self.grpc, request_id, rng)  # an HTTP answer's id is the x-request-id it was sent with

    def _question_id(self) -> int:
        self._n += 1
        return self._n

    async def http_repeat(self, http, rng):
        await self._post(http, rng, rng.choice(REPEATED))

    async def http_new(self, http, rng):
        await self._post(http, rng, self._question())

    async def http_stream(self, http, rng):
        await self._post(http, rng, self._question(), stream=True)

    async def http_abandon(self, http, rng):
        await self._post(http, rng, self._question(), stream=True, abandon=True)

    async def http_gpu(self, http, rng):
        await self._post(http, rng, self._question(), model=GPU_TIER)


# ---- faults ---------------------------------------------------------------------------

def schedule(minutes: float, scale: float = 1.0) -> list[tuple[float, str, str]]:
    """FAULTS, repeated every FAULT_PERIOD minutes, none in the last two
    minutes (so each has time to recover before the end). `scale` < 1
    brings them closer, for a short trial of the benchmark itself."""
    out, base = [], 0.0
    while base < minutes:
        out += [(base + m * scale, kind, tier) for m, kind, tier in FAULTS if base + m * scale <= minutes - 2]
        base += FAULT_PERIOD * scale
    return out


async def _recovered(client, tier: str, since: float, tally: Tally, limit_s: float = 240.0) -> float | None:
    """Seconds from `since` until `tier` answers as itself (not degraded),
    asking once a second; None if it did not within `limit_s`."""
    while time.monotonic() - since < limit_s:
        try:
            r = await client.generate("What is 1 plus 1?", route=tier, max_tokens=4, cache="off", timeout=30)
            tally.saw("Generate", "OK")
            if r.decision.tier_name == tier and not r.decision.degraded:
                return time.monotonic() - since
        except TriageError as exc:
            tally.saw("Generate", _status(exc))
        await asyncio.sleep(1.0)
    return None


async def run_faults(address: str, router_log: Path, upstream: Upstream, started: float, plan: list, tally: Tally,
                     record: list) -> None:
    async with AsyncTriageClient(address, timeout=60) as client:
        for minute, kind, tier in plan:
            await asyncio.sleep(max(0.0, started + 60 * minute - time.monotonic()))
            at = time.monotonic()
            if kind == "kill":
                for pid in _engine_pids(router_log, tier):
                    try:
                        os.kill(pid, signal.SIGKILL)  # as an OOM killer would
                    except ProcessLookupError:
                        pass
            elif kind == "stall":
                os.kill(upstream.proc.pid, signal.SIGSTOP)
                await asyncio.sleep(STALL_S)
                os.kill(upstream.proc.pid, signal.SIGCONT)
            else:  # reset: every connection to it is reset, then it comes back on the same port
                upstream.stop()
                await asyncio.sleep(5.0)
                await asyncio.to_thread(upstream.start)
            recovered = await _recovered(client, tier, at, tally)
            record.append({"minute": minute, "fault": kind, "tier": tier, "recovered_s": recovered})
            print(f"  minute {minute:g}: {kind} {tier}: "
                  + (f"answered as itself again after {recovered:.1f} s" if recovered is not None else "NOT recovered"), flush=True)


# ---- samples --------------------------------------------------------------------------

def scrape(metrics_url: str) -> dict[tuple, float]:
    """/metrics as {(name, sorted label items): value}."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def _total(metrics: dict, name: str, **labels) -> float:
    return sum(v for (n, items), v in metrics.items() if n == name and all(dict(items).get(k) == w for k, w in labels.items()))


def _rows(store: Path) -> int:
    with sqlite3.connect(store, timeout=10) as db:
        return db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]


def sample(pid: int, metrics_url: str, store: Path, t: float) -> dict:
    router = psutil.Process(pid)
    engines = 0
    for child in router.children(recursive=True):
        try:
            engines += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    m = scrape(metrics_url)
    calls = collections.Counter()
    for (name, items), v in m.items():
        if name == "router_requests_total":
            calls[dict(items)["code"]] += v
    return {"t_min": t / 60, "rss_mb": router.memory_info().rss / 2**20, "fds": router.num_fds(), "threads": router.num_threads(),
            "engines_rss_mb": engines / 2**20,
            "exact_entries": _total(m, "router_cache_entries", kind="exact"), "semantic_entries": _total(m, "router_cache_entries", kind="semantic"),
            "cache_mb": _total(m, "router_cache_bytes") / 2**20, "remembered": _total(m, "router_feedback_answers_remembered"),
            "feedback_rows": _rows(store), "engine_restarts": _total(m, "router_engine_restarts_total"), "calls": dict(calls)}


async def run_samples(pid: int, metrics_url: str, store: Path, started: float, until: float, every: float, out: list) -> None:
    while True:
        out.append(await asyncio.to_thread(sample, pid, metrics_url, store, time.monotonic() - started))
        if time.monotonic() + every > until:
            return
        await asyncio.sleep(every)


# ---- the report -----------------------------------------------------------------------

SERIES = (("rss_mb", "router RSS (MB)"), ("fds", "router open file descriptors"), ("threads", "router threads"),
          ("engines_rss_mb", "engine processes' RSS (MB)"), ("exact_entries", "exact cache entries (bound 300)"),
          ("semantic_entries", "semantic cache entries (bound 300)"), ("cache_mb", "caches' bytes (MB)"),
          ("remembered", "remembered answers (bound 500)"), ("feedback_rows", "feedback store rows (kept by design)"))


def growth(samples: list[dict], warmup_min: float) -> dict:
    """Per series: first and last value after warm-up, the least-squares
    slope per 10 minutes after warm-up, and the growth over the last 20
    minutes (mean of the last three samples against the mean of the three
    around 20 minutes before the end), as a share."""
    after = [s for s in samples if s["t_min"] >= warmup_min]
    end = samples[-1]["t_min"]
    out = {}
    for key, _ in SERIES:
        t, v = np.array([s["t_min"] for s in after]), np.array([s[key] for s in after], dtype=float)
        slope = float(np.polyfit(t, v, 1)[0]) * 10 if len(after) > 2 else float("nan")
        near = sorted(samples, key=lambda s: abs(s["t_min"] - (end - 20)))[:3]
        before, last = np.mean([s[key] for s in near]), np.mean([s[key] for s in samples[-3:]])
        out[key] = {"after_warmup": float(v[0]) if len(v) else None, "end": float(v[-1]) if len(v) else None,
                    "max": float(v.max()) if len(v) else None, "slope_per_10_min": slope,
                    "growth_last_20_min": float(last / before - 1) if before else None}
    return out


def accounting(tally: Tally, final: dict, rows_acknowledged_missing: int) -> dict:
    """The callers' calls against the router's count of them, per RPC and status."""
    server = collections.Counter()
    for (name, items), v in final.items():
        if name == "router_requests_total":
            labels = dict(items)
            server[(labels["rpc"], labels["code"])] += int(v)
    per_rpc = {}
    for rpc in sorted({rpc for rpc, _ in tally.calls}):
        mine = {s: n for (r, s), n in sorted(tally.calls.items()) if r == rpc}
        theirs = {s: n for (r, s), n in sorted(server.items()) if r == rpc}
        per_rpc[rpc] = {"callers": sum(mine.values()), "router": sum(theirs.values()), "callers_by_status": mine,
                        "router_by_status": theirs, "agrees": _agree(mine, theirs)}
    return {"per_rpc": per_rpc, "feedback_acknowledged": len(tally.acknowledged), "acknowledged_missing": rows_acknowledged_missing}


def _agree(mine: dict, theirs: dict) -> bool:
    """Every status the callers learned is the router's count of it; an
    abandoned call is the router's CANCELLED, or its OK when the answer
    was complete before the cancellation reached it."""
    loose = ("OK", "CANCELLED", ABANDONED)
    exact = all(mine.get(s, 0) == theirs.get(s, 0) for s in set(mine) | set(theirs) if s not in loose)
    ok, abandoned = mine.get("OK", 0), mine.get(ABANDONED, 0) + mine.get("CANCELLED", 0)
    return exact and theirs.get("OK", 0) >= ok and theirs.get("OK", 0) + theirs.get("CANCELLED", 0) == ok + abandoned


def _missing(store: Path, acknowledged: set) -> int:
    with sqlite3.connect(store, timeout=10) as db:
        present = {r[0] for r in db.execute("SELECT request_id FROM feedback")}
    return len(acknowledged - present)


def table(result: dict) -> str:
    lines = ["| series | after warm-up | end | max | slope per 10 min | growth, last 20 min |", "|---|---|---|---|---|---|"]
    for key, label in SERIES:
        g = result["growth"][key]
        lines.append(f"| {label} | {g['after_warmup']:,.1f} | {g['end']:,.1f} | {g['max']:,.1f} | {g['slope_per_10_min']:+,.2f} | "
                     f"{100 * g['growth_last_20_min']:+.1f} % |" if g["growth_last_20_min"] is not None else f"| {label} | n/a |")
    lines += ["", "| fault | at minute | answered as itself again after |", "|---|---|---|"]
    lines += [f"| {f['fault']} {f['tier']} | {f['minute']:g} | " + (f"{f['recovered_s']:.1f} s |" if f["recovered_s"] is not None else "not recovered |")
              for f in result["faults"]]
    lines += ["", "| RPC | calls made | counted by the router | by status (callers) | by status (router) | agree |", "|---|---|---|---|---|---|"]
    for rpc, a in result["accounting"]["per_rpc"].items():
        lines.append(f"| {rpc} | {a['callers']:,} | {a['router']:,} | {_codes(a['callers_by_status'])} | {_codes(a['router_by_status'])} | "
                     f"{'yes' if a['agrees'] else 'NO'} |")
    acc = result["accounting"]
    lines += ["", f"Feedback acknowledged: {acc['feedback_acknowledged']:,}; missing from the store: {acc['acknowledged_missing']}."]
    return "\n".join(lines)


def _codes(by: dict) -> str:
    return ", ".join(f"{s} {n:,}" for s, n in sorted(by.items(), key=lambda kv: -kv[1]))


# ---- main -----------------------------------------------------------------------------

async def soak(args, folder: Path) -> dict:
    upstream = Upstream(folder)
    upstream.start()
    log_path = folder / "router.log"
    with open(log_path, "w") as log:
        router, address, http_url, metrics_url = start_router(_config(folder, upstream.url), log, metrics=True)
    tally, samples, faults = Tally(), [], []
    try:
        started = time.monotonic()
        until = started + 60 * args.minutes
        print(f"soak: router pid {router.pid} on {address} and {http_url}; {args.minutes:g} minutes, {args.workers} callers", flush=True)
        await asyncio.gather(Callers(address, http_url, tally).run(args.workers, until),
                             run_faults(address, log_path, upstream, started, schedule(args.minutes, args.fault_scale), tally, faults),
                             run_samples(router.pid, metrics_url, folder / "feedback.sqlite", started, until, args.sample_seconds, samples))
        await asyncio.sleep(3)  # cancelled calls are counted when the router's side of them ends
        final = await asyncio.to_thread(scrape, metrics_url)
        missing = _missing(folder / "feedback.sqlite", tally.acknowledged)
    finally:
        router.send_signal(signal.SIGTERM)
        code = router.wait(timeout=60)
        upstream.stop()
    text = log_path.read_text()
    return {"minutes": args.minutes, "warmup_minutes": args.warmup_minutes, "workers": args.workers, "samples": samples,
            "growth": growth(samples, args.warmup_minutes), "faults": faults, "accounting": accounting(tally, final, missing),
            "router_exit_code": code, "internal_in_log": text.count("INTERNAL"), "tracebacks_in_log": text.count("Traceback"),
            "leak_warnings": text.count("leaked shared_memory"),
            "caller_seconds_p50": {a: float(np.median(v)) for a, v in tally.latencies.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=35.0)
    p.add_argument("--warmup-minutes", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--sample-seconds", type=float, default=30.0)
    p.add_argument("--fault-scale", type=float, default=1.0, help="< 1: faults closer together (a short trial)")
    p.add_argument("--out", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="soak-"))  # kept: the router's and the simulator's logs
    print(f"soak: logs in {folder}", flush=True)
    result = asyncio.run(soak(args, folder))
    print(table(result))
    print(f"router exit code {result['router_exit_code']}; log: {result['tracebacks_in_log']} tracebacks, "
          f"{result['internal_in_log']} INTERNAL, {result['leak_warnings']} leak warnings")
    Path(args.out, "soak.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
