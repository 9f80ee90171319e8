"""Which HTTP client a remote or SMG tier should read its server with:
the time to a streamed answer's first event through httpx and through
aiohttp, against the same server on loopback, in alternating blocks:

    python -m benchmarks.upstream_client [--rounds 10] [--per-block 100]

The server is a minimal aiohttp event stream in this process (two events,
then [DONE]), so what differs between the two columns is the client alone.
server/tiers/upstream.py uses aiohttp because of this measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

EVENTS = [
    {"choices": [{"text": "Hi", "finish_reason": None}], "usage": {"completion_tokens": 1}},
    {"choices": [{"text": "!", "finish_reason": "stop"}], "usage": {"completion_tokens": 2}},
]
BODY = {"model": "m", "prompt": list(range(30)), "max_tokens": 2, "stream": True}


async def _serve():
    from aiohttp import web

    async def event_stream(request, events):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(request):
        await request.json()
        return await event_stream(request, EVENTS)

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def main_async(rounds: int, per_block: int) -> dict:
    import aiohttp
    import httpx

    runner, port = await _serve()
    url = f"http://127.0.0.1:{port}/v1/completions"
    async with httpx.AsyncClient() as hx, aiohttp.ClientSession() as ah:
        async def via_httpx() -> float:
            started = time.perf_counter()
            async with hx.stream("POST", url, json=BODY) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        return time.perf_counter() - started

        async def via_aiohttp() -> float:
            started = time.perf_counter()
            async with ah.post(url, json=BODY) as resp:
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        return time.perf_counter() - started

        clients = {"httpx": via_httpx, "aiohttp": via_aiohttp}
        seconds: dict[str, list[float]] = {name: [] for name in clients}
        for name, call in clients.items():  # warm: connections, imports, caches
            for _ in range(20):
                await call()
        for i in range(rounds):
            for name in (list(clients) if i % 2 == 0 else list(clients)[::-1]):
                for _ in range(per_block):
                    seconds[name].append(await clients[name]())
    await runner.cleanup()
    out = {name: {"first_event_p50_ms": statistics.median(s) * 1e3, "first_event_p99_ms": sorted(s)[int(0.99 * len(s))] * 1e3,
                  "requests": len(s)} for name, s in seconds.items()}
    out["httpx_minus_aiohttp_p50_ms"] = out["httpx"]["first_event_p50_ms"] - out["aiohttp"]["first_event_p50_ms"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=100)
    args = parser.parse_args(argv)
    r = asyncio.run(main_async(args.rounds, args.per_block))
    for name in ("httpx", "aiohttp"):
        print(f"{name:8s} first event p50 {r[name]['first_event_p50_ms']:.3f} ms, p99 {r[name]['first_event_p99_ms']:.3f} ms "
              f"({r[name]['requests']} requests)")
    print(f"httpx - aiohttp, p50: {r['httpx_minus_aiohttp_p50_ms']:+.3f} ms")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
