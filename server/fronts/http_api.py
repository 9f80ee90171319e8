"""OpenAI-compatible HTTP on the same router core: `POST /v1/chat/completions`
(unary, or server-sent events with `stream: true`) and `GET /v1/models`.

One routing path: a request becomes the same `GenerateInput` a gRPC call
becomes and goes through `Router.generate`, so limits, caches, metrics,
fallback and the explicit sampling rules are the gRPC ones. This module only
translates: JSON in, events out, errors to OpenAI's error body and an HTTP
status. Served by aiohttp on the router's own event loop (`server.http_port`;
-1: off).

- `model`: `auto` (or `http_auto_model`) lets the classifier decide; a tier
  name or a tier's served model name forces that tier; anything else is 404.
- Every field that would change the answer and is not supported is a 400
  naming it: never silently ignored.
- The decision travels in `x-triage-*` headers and a `triage` object.
- A client that disconnects cancels the handler, which closes the router's
  generator, which aborts the engine request, as on gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable

import msgspec

from .auth import matches
from ..callers.identity import CallerBook, bearer_token
from ..config import OTHER_CALLER
from .calls import Call, Calls, Failure
from ..errors import InvalidArgument, RouterError, TooLarge, Unauthenticated
from ..router import Router
from ..types import DecisionEvent, DeltaEvent, FinalEvent, GenerateInput
from .openai_schema import cost_json, decision_headers, decision_json, parse, usage_json

log = logging.getLogger("triage.http")

# Status and OpenAI error type for each router status.
HTTP_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"), "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"), "NOT_FOUND": (404, "not_found_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"), "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout"), "INTERNAL": (500, "internal_error"),
}
MAX_BODY_BYTES = 1024 * 1024
LISTEN_BACKLOG = 2048  # pending connections (the kernel caps it at net.core.somaxconn)


async def _read_json(request):
    """The body as JSON; 413 over MAX_BODY_BYTES (before reading a byte
    when Content-Length says so), 400 naming what is wrong otherwise."""
    from aiohttp import web

    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise TooLarge("body", f"{request.content_length} bytes; at most {MAX_BODY_BYTES}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("body", f"over {MAX_BODY_BYTES} bytes") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidArgument("body", f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise InvalidArgument("body", "JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidArgument("body", f"not valid JSON: {exc}") from None


def _error_response(web, failure: Failure):
    """OpenAI's error body and the HTTP status for a call's failure."""
    code, kind = HTTP_STATUS.get(failure.status, (500, "internal_error"))
    code = failure.http_status or code
    headers = {"Retry-After": str(max(1, math.ceil(failure.retry_after_ms / 1000)))} if failure.retry_after_ms else {}
    body = {"error": {"message": failure.message, "type": kind, "param": failure.field, "code": failure.status.lower()}}
    return web.json_response(body, status=code, headers=headers)


class OpenAIHttp:
    """The aiohttp application and its site, on the router's loop."""

    def __init__(self, router: Router, calls: Calls, tokens: Iterable[str], auto_model: str = "auto", security=None,
                 callers: CallerBook | None = None):
        self.router, self.calls, self.auto_model = router, calls, auto_model
        self.callers = callers  # None or empty: every call is OTHER_CALLER
        self._security = security  # TLS (and mutual TLS) as for gRPC
        self._tokens = tuple(t.encode() for t in tokens)
        self._runner = None
        self.port: int | None = None

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        return app

    async def start(self, host: str, port: int, grace_s: float = 30.0, reuse_port: bool = False) -> int:
        """Listen; on stop, requests in flight get `grace_s` (the router's
        drain ends them at their next token by then anyway)."""
        from aiohttp import web

        # handler_cancellation: a client that disconnects cancels its handler,
        # and with it the engine request (aiohttp's default lets it run on).
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=grace_s, handler_cancellation=True)
        await self._runner.setup()
        # backlog: aiohttp's default of 128 pending connections drops part of
        # a burst of new clients, whose SYNs are then retried a second later
        # (+1 s first-token p99 at 256 new streams, benchmarks.gpu_pace).
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl_context(), reuse_port=reuse_port or None,
                           backlog=LISTEN_BACKLOG)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    def _ssl_context(self):
        """The gRPC server's certificate (and client CA) for HTTPS too: one
        port plaintext and the other encrypted would be a hole."""
        sec = self._security
        if sec is None or not sec.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sec.tls_cert, sec.tls_key)
        if sec.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(sec.tls_client_ca)
        return context

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ---------------------------------------------------------------

    def _authorised(self, request) -> bool:
        if not self._tokens:
            return True
        token = bearer_token(request.headers.get("Authorization", ""))
        return token is not None and matches(token, self._tokens)

    def _caller(self, request) -> str:
        if not self.callers:
            return OTHER_CALLER
        transport = request.transport
        return self.callers.of_http(request.headers.get("Authorization", ""),
                                    lambda: transport.get_extra_info("peercert") if transport is not None else None)

    async def models(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return _error_response(web, Failure("UNAUTHENTICATED", "missing or invalid bearer token"))
        created = int(time.time())
        data = [{"id": self.auto_model, "object": "model", "created": created, "owned_by": "triage"}]
        data += [{"id": t.name, "object": "model", "created": created, "owned_by": "triage", "root": t.model,
                  "max_model_len": t.config.max_model_len} for t in self.router.tiers]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request):
        from aiohttp import web

        arrived = time.perf_counter()
        try:
            with self.calls.track("http.chat_completions", request.headers.get("x-request-id")) as call:
                if not self._authorised(request):
                    raise Unauthenticated("missing or invalid bearer token")
                call.check_id()
                body = await _read_json(request)
                req, stream, include_usage = parse(body, self.router.tiers, self.auto_model, call.request_id,
                                                   request.headers.get("x-session-id"))
                req = dataclasses.replace(req, trace_parent=request.headers.get("traceparent"), stream=stream, caller=self._caller(request))
                events = self.router.generate(req, arrived)
                if stream:
                    return await self._stream(request, events, req, include_usage, call)
                return await self._unary(events, req, call)
        except ConnectionResetError:
            # The caller left while its answer was being written (counted
            # CANCELLED, the engine request aborted): nothing to send it, and
            # nothing for aiohttp to log as a server error with a traceback.
            raise asyncio.CancelledError from None
        return _error_response(web, call.failure)

    async def _unary(self, events, req: GenerateInput, call: Call):
        from aiohttp import web

        decision, parts, final = None, [], None
        async for event in events:
            if isinstance(event, DecisionEvent):
                decision = event.decision
                call.decided(decision)
            elif isinstance(event, DeltaEvent):
                parts.append(event.text)
            elif isinstance(event, FinalEvent):
                final = event
        cache = final.cache.status
        body = {
            "id": f"chatcmpl-{req.request_id}", "object": "chat.completion", "created": int(time.time()), "model": decision.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)}, "finish_reason": final.finish_reason}],
            "usage": usage_json(final.usage), "triage": {**decision_json(decision, cache), **cost_json(final.usage)},
        }
        return web.json_response(body, headers={**decision_headers(decision, cache), "x-request-id": req.request_id})

    async def _stream(self, request, events, req: GenerateInput, include_usage: bool, call: Call):
        """Server-sent events as OpenAI sends them. Nothing is written before
        the decision, so an error before it is still a plain HTTP error."""
        from aiohttp import web

        response, decision, head = None, None, b""
        created, cid = int(time.time()), f"chatcmpl-{req.request_id}"

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": decision.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return b"data: " + msgspec.json.encode(body) + b"\n\n"

        def text_chunk(text: str) -> bytes:
            """chunk({"content": text}), by the bytes around the text: one per token."""
            return head + msgspec.json.encode(text) + b'},"finish_reason":null}]}\n\n'

        try:
            async for event in events:
                if isinstance(event, DecisionEvent):
                    decision = event.decision
                    call.decided(decision)
                    response = web.StreamResponse(headers={**decision_headers(decision), "x-request-id": req.request_id,
                                                           "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                    await response.prepare(request)
                    await response.write(chunk({"role": "assistant", "content": ""}))
                    head = chunk({"content": ""}).split(b'"content":""', 1)[0] + b'"content":'
                elif isinstance(event, DeltaEvent):
                    await response.write(text_chunk(event.text))
                elif isinstance(event, FinalEvent):
                    triage = {**decision_json(decision, event.cache.status), **cost_json(event.usage)}
                    await response.write(chunk({}, event.finish_reason, triage=triage))
                    if include_usage:
                        usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": decision.model,
                                 "choices": [], "usage": usage_json(event.usage)}
                        await response.write(b"data: " + msgspec.json.encode(usage) + b"\n\n")
        except RouterError as exc:
            if response is None:
                raise
            call.code = exc.status  # the stream had begun: the error goes in it, as OpenAI's servers send it
            err = {"error": {"message": exc.message, "type": HTTP_STATUS.get(exc.status, (500, "internal_error"))[1], "code": exc.status.lower()}}
            await response.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        finally:
            await events.aclose()  # a write that failed (the client left) aborts the engine request here
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
