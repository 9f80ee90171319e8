"""What one streamed message costs the transport alone, before any router
code: a grpc.aio server that streams fixed GenerateStreamResponse messages,
beside an aiohttp server that streams fixed server-sent events, each in its
own process on uvloop, under the same load, in alternating blocks:

    python -m benchmarks.stream_floor [--streams 256] [--messages 100] [--step-ms 30] [--rounds 3] [--out docs]

Every stream gets one message per step (as every running request gets one
token per engine step); the client is another process. Prints each
server's CPU microseconds per message. The router can stream a token no
cheaper than its front's floor: this is the part of the router's CPU per
token (benchmarks.gpu_pace) that no router code can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from .harness import cpu_seconds

DELTA = " word"


class _Steps:
    """One step clock for all streams of a server process."""

    def __init__(self, step_s: float):
        self.step_s = step_s
        self._step: asyncio.Future | None = None

    async def next(self) -> None:
        if self._step is None or self._step.done():
            loop = asyncio.get_running_loop()
            self._step = loop.create_future()
            loop.call_later(self.step_s, lambda f=self._step: f.done() or f.set_result(None))
        await asyncio.shield(self._step)


def _grpc_server(conn, messages: int, step_s: float) -> None:
    import grpc
    import uvloop

    from triage_proto import router_pb2 as pb

    async def main():
        steps = _Steps(step_s)

        async def stream(request, context):
            for _ in range(messages):
                await steps.next()
                yield pb.GenerateStreamResponse(request_id="r", delta=DELTA)

        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 4096)])
        handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=pb.GenerateRequest.FromString,
                                                       response_serializer=pb.GenerateStreamResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("router.v1.Router", {"GenerateStream": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await server.wait_for_termination()

    uvloop.run(main())


def _http_server(conn, messages: int, step_s: float) -> None:
    import uvloop
    from aiohttp import web

    event = b'data: {"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}\n\n'

    async def main():
        steps = _Steps(step_s)

        async def stream(request):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for _ in range(messages):
                await steps.next()
                await resp.write(event)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/stream", stream)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


async def _grpc_block(port: int, streams: int) -> int:
    import grpc

    from triage_proto import router_pb2 as pb

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream("/router.v1.Router/GenerateStream", request_serializer=pb.GenerateRequest.SerializeToString,
                                    response_deserializer=pb.GenerateStreamResponse.FromString)

        async def one() -> int:
            return sum([1 async for _ in call(pb.GenerateRequest())])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def _http_block(port: int, streams: int) -> int:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def one() -> int:
            async with http.post(f"http://127.0.0.1:{port}/stream") as resp:
                return sum([1 async for line in resp.content if line.startswith(b"data:")])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write stream_floor.json in this folder (docs/benchmarks.md section 12 quotes it)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    servers, ports = {}, {}
    for name, target in (("grpc.aio", _grpc_server), ("aiohttp SSE", _http_server)):
        parent, child = ctx.Pipe()
        servers[name] = ctx.Process(target=target, args=(child, args.messages, args.step_ms / 1e3), daemon=True)
        servers[name].start()
        ports[name] = parent.recv()
    blocks = {"grpc.aio": _grpc_block, "aiohttp SSE": _http_block}
    cpu = {name: 0.0 for name in servers}
    sent = {name: 0 for name in servers}
    try:
        for name in servers:  # warm
            asyncio.run(blocks[name](ports[name], 8))
        for r in range(args.rounds):
            for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                before = cpu_seconds(servers[name].pid)
                sent[name] += asyncio.run(blocks[name](ports[name], args.streams))
                cpu[name] += cpu_seconds(servers[name].pid) - before
    finally:
        for proc in servers.values():
            proc.kill()
    for name in servers:
        print(f"{name:12s}: {1e6 * cpu[name] / sent[name]:.1f} µs of server CPU per streamed message "
              f"({sent[name]} messages to {args.streams} streams, one per {args.step_ms:g} ms step; {os.cpu_count()} cores)")
    if args.out:
        result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "streams": args.streams, "step_ms": args.step_ms,
                  "cores": os.cpu_count(), "us_per_message": {name: 1e6 * cpu[name] / sent[name] for name in servers}}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "stream_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
