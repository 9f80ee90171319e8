"""Where a first token's time goes, hop by hop, at one caller or in a burst:

    python -m benchmarks.first_token [--requests 60] [--pace h200] [--burst N] [--out docs]

Starts benchmarks/simulated_vllm.py (recording when each request arrives
and when its first event leaves) and the router (both tiers `remote` on it,
caches off; its log line records when each request arrived), then asks the
same kind of question, one at a time, directly and through the router's
HTTP and gRPC fronts in turn. Every process stamps time.time() on the same
machine, so each first token's time splits into:

- client -> router: the request reaching the router's handler;
- router's work: arrival to the request handed to the tier (`routing_ms`:
  validation, classification, placement, rendering the prompt);
- router -> server: the upstream HTTP request reaching the server;
- server: its own time to the first event (prefill), the same for every path;
- server -> router: the first event read, decoded and taken as a token;
- router -> client: the first token reaching the caller.

Direct has only client -> server, server and server -> client. Prints the
medians (the first 5 requests of each path are warm-up) and writes
`first_token.json`. With `--burst N`, each of `--requests` rounds sends N
questions at once per path, from one client process (the first round is
warm-up), and writes `first_token_burstN.json`: where a burst's first
tokens wait (in a burst, client -> router holds the client's own work and
the router's accepting of the calls before it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .harness import grpc_stream, processes, router_config, sse_stream, start_router
from .remote import MODEL, MODEL_DIR, ROOT, _free_port, _healthy, _wait

WARM_UP = 5
MAX_TOKENS = 8  # the first token is what is timed
LEGS = ("client -> router", "router's work", "router -> server", "server", "server -> router", "router -> client")


async def _first_token(stream) -> tuple[float, float]:
    """Sent and first-text times (time.time()) of one streamed answer
    (gpu_pace's clients, which time the first text from their start)."""
    sent = time.time()
    ttft, _, _ = await stream
    return sent, sent + ttft


async def _ask(direct: str, front: str, grpc_address: str, requests: int, burst: int = 1) -> dict[str, dict[str, tuple[float, float]]]:
    """Per path, per request id: (sent, first text), paths in turn; with
    `burst` > 1, each of `requests` rounds sends that many at once."""
    import aiohttp

    from clients import AsyncTriageClient

    stamps: dict[str, dict[str, tuple[float, float]]] = {"direct": {}, "http": {}, "grpc": {}}
    client = AsyncTriageClient(grpc_address, timeout=60)

    def stream(http, path: str, n: int, i: int):
        prompt, rid = f"Question {n}.{i}: what is {n} plus {i + 1}?", f"ft-{path}-{n}-{i}"
        if path == "grpc":
            return rid, grpc_stream(client, prompt, MAX_TOKENS, request_id=rid)
        url, model = (direct, MODEL) if path == "direct" else (front, "small")
        return rid, sse_stream(http, url, model, prompt, MAX_TOKENS, headers={"X-Request-Id": rid})

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for n in range(requests):
                for path in stamps:
                    rids, streams = zip(*(stream(http, path, n, i) for i in range(burst)))
                    stamps[path].update(zip(rids, await asyncio.gather(*map(_first_token, streams))))
                    if burst > 1:
                        await asyncio.sleep(0.5)  # the burst's answers end before the next path's
    finally:
        await client.close()
    return stamps


def _legs(path: str, sent: float, first: float, server: dict, router: dict | None) -> dict[str, float]:
    """One request's first token, split into hops (milliseconds)."""
    s0, s1 = server["arrived"], server["first_event"]
    if router is None:
        return {"client -> server": s0 - sent, "server": s1 - s0, "server -> client": first - s1, "total": first - sent}
    r0 = router["arrived_at"]
    handed, r1 = r0 + router["routing_ms"] / 1e3, r0 + router["ttft_ms"] / 1e3
    return {"client -> router": r0 - sent, "router's work": handed - r0, "router -> server": s0 - handed, "server": s1 - s0,
            "server -> router": r1 - s1, "router -> client": first - r1, "total": first - sent}


def breakdown(stamps: dict, timeline: Path, router_log: Path, warm_up: int = WARM_UP) -> dict[str, dict[str, float]]:
    """Median milliseconds per hop and path, after the first `warm_up` requests."""
    server = {row["request_id"]: row for row in map(json.loads, timeline.read_text().splitlines())}
    router = {}
    for line in router_log.read_text().splitlines():
        if '"arrived_at"' in line:
            row = json.loads(line[line.index("{"):])
            router[row["request_id"]] = row
    out = {}
    for path, requests in stamps.items():
        rows = [_legs(path, sent, first, server[rid], None if path == "direct" else router[rid])
                for rid, (sent, first) in list(requests.items())[warm_up:]]
        out[path] = {leg: float(np.median([r[leg] for r in rows])) * 1e3 for leg in rows[0]}
        out[path]["requests"] = len(rows)
    return out


def _print(result: dict) -> None:
    d = result["direct"]
    print(f"direct: {d['total']:.2f} ms to the first token (client -> server {d['client -> server']:.2f}, "
          f"server {d['server']:.2f}, server -> client {d['server -> client']:.2f})")
    for path in ("http", "grpc"):
        r = result[path]
        print(f"{path:6s}: {r['total']:.2f} ms (+{r['total'] - d['total']:.2f}): "
              + ", ".join(f"{leg} {r[leg]:.2f}" for leg in LEGS), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_token", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="per path")
    parser.add_argument("--pace", default="h200", choices=("h200", "instant"))
    parser.add_argument("--burst", type=int, default=1, help="requests sent at once, per round and path (--requests rounds; "
                                                              "the first round is warm-up)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, processes() as procs:
        tmp = Path(tmp)
        port, timeline, router_log = _free_port(), tmp / "timeline.jsonl", tmp / "router.log"
        url = f"http://127.0.0.1:{port}"
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.simulated_vllm", str(port), str(MODEL_DIR), MODEL,
                                       "--pace", args.pace, "--timeline", str(timeline)],
                                      cwd=ROOT, stdout=(tmp / "sim.log").open("w"), stderr=subprocess.STDOUT))
        _wait(lambda: _healthy(url), 120, "the simulator")
        router = start_router(router_config(url, tmp, max(16, args.burst)), router_log.open("w"))
        procs.append(router.proc)
        stamps = asyncio.run(_ask(f"{url}/v1/chat/completions", f"{router.http}/v1/chat/completions", router.address, args.requests,
                                  args.burst))
        result = breakdown(stamps, timeline, router_log, WARM_UP if args.burst == 1 else args.burst)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pace": args.pace, "burst": args.burst, "rounds": args.requests,
              "ms_median": result}
    _print(result["ms_median"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ("first_token.json" if args.burst == 1 else f"first_token_burst{args.burst}.json")).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
