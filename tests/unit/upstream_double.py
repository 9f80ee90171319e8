"""A stand-in for the HTTP servers behind a tier (`vllm serve` replicas, an
SMG gateway) for the engines' unit tests: one real aiohttp server on a unix
socket, which every request reaches whatever its URL's host, answering by
the Host header. Real HTTP on the wire, so the engines' client code (aiohttp
in server/tiers/upstream.py) runs as it does in production.

A test gives a function from the request it saw to a Reply:

    async with Upstream(handler) as upstream:
        engine = RemoteEngine(tier, resilience, metrics, connector=upstream.connector())
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp
from aiohttp import web


@dataclass
class Seen:
    """One request as the server received it."""

    base: str  # the URL it was sent to, up to the port: "http://a:8000"
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: object = b""  # bytes, or JSON for a dict or list
    chunks: list[bytes] = field(default_factory=list)  # streamed one write each, after the body
    reset: bool = False  # drop the connection after the chunks: a server dying mid-answer
    pause: float = 0.0  # seconds between chunks: a server generating at a pace


class Upstream:
    def __init__(self, handler: Callable[[Seen], Reply]):
        self.handler = handler
        self._folder = tempfile.TemporaryDirectory()
        self.socket = str(Path(self._folder.name) / "upstream.sock")
        self._runner: web.AppRunner | None = None

    def connector(self) -> aiohttp.UnixConnector:
        return aiohttp.UnixConnector(path=self.socket)

    async def __aenter__(self) -> "Upstream":
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Go away: from now on connections are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._folder.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(f"http://{request.host}", request.path, dict(request.headers), await request.read())
        reply = self.handler(seen)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        if not reply.chunks and not reply.reset:
            return web.Response(status=reply.status, body=body, content_type="application/json")
        resp = web.StreamResponse(status=reply.status, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, chunk in enumerate(([body] if body else []) + reply.chunks):
            if i and reply.pause:
                await asyncio.sleep(reply.pause)
            await resp.write(chunk)
        if reply.reset:
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp
