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

import msgspec

from .auth import matches
from .calls import Call, Calls, Failure
from ..observe.costs import Cost
from ..errors import InvalidArgument, NotFound, RouterError, TooLarge, Unauthenticated
from ..router import Router
from ..types import ROLE_ALIASES, ChatMessage, DecisionEvent, DeltaEvent, FinalEvent, GenerateInput, SamplingRequest

log = logging.getLogger("triage.http")

# Status and OpenAI error type for each router status.
HTTP_STATUS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"), "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"), "NOT_FOUND": (404, "not_found_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"), "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout"), "INTERNAL": (500, "internal_error"),
}
# Fields taken from a request; any other is refused by name.
SUPPORTED = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens", "max_completion_tokens",
             "stop", "seed", "n", "user"}
MAX_BODY_BYTES = 1024 * 1024
# Keys an assistant turn carries when a client replays it from a response
# (the SDK's message.model_dump()): accepted when empty (null, [], ""),
# refused by name otherwise (tool calls would change the answer).
REPLAYED_EMPTY = {"refusal", "tool_calls", "function_call", "audio", "annotations"}


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


def _number(body: dict, name: str, kind=float):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise InvalidArgument(name, f"expected {'an integer' if kind is int else 'a number'}, got {json.dumps(value)[:40]}")
    return kind(value)


def _messages(raw) -> tuple[ChatMessage, ...]:
    """OpenAI's messages as clients send them: content as a string or as
    text parts, the developer role, and assistant turns replayed from
    history (content null, empty refusal and tool fields)."""
    if not isinstance(raw, list):
        raise InvalidArgument("messages", "expected a list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidArgument(f"messages[{i}]", "expected an object with a string role and a content")
        extra = sorted(k for k in set(m) - {"role", "content", "name"} if not (k in REPLAYED_EMPTY and not m[k]))
        if extra:
            raise InvalidArgument(f"messages[{i}].{extra[0]}", "not supported")
        messages.append(ChatMessage(ROLE_ALIASES.get(m["role"], m["role"]), _content(i, m)))
    return tuple(messages)


def _content(i: int, m: dict) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if content is None and m["role"] == "assistant":
        return ""
    if isinstance(content, list):
        return _text_parts(i, content)
    raise InvalidArgument(f"messages[{i}].content", "expected a string or a list of text parts")


def _text_parts(i: int, parts: list) -> str:
    """Text parts joined by newlines, as vLLM's own server joins them; any
    other part (image, audio, file) is refused by name: the tiers are text
    models."""
    texts = []
    for j, part in enumerate(parts):
        field = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidArgument(field, "expected a content part: an object with a string type")
        if part["type"] != "text":
            raise InvalidArgument(f"{field}.type", f"{part['type'][:32]!r} parts are not supported: the tiers are text models")
        if not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{field}.text", "expected a string")
        texts.append(part["text"])
    return "\n".join(texts)


def parse(body, tiers, auto_model: str, request_id: str, session_id: str | None = None) -> tuple[GenerateInput, bool, bool]:
    """A chat completion request as the router's input; (input, stream,
    include_usage). The session is the `x-session-id` header's
    (`session_id`), else OpenAI's `user` field. Raises InvalidArgument /
    NotFound naming the field."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "expected a JSON object")
    unknown = sorted(k for k in set(body) - SUPPORTED if body[k] is not None)  # null: not set, as in OpenAI's API
    if unknown:
        raise InvalidArgument(unknown[0], "not supported by this server (it would change the answer, so it is refused rather than ignored)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model", f"expected a model name: {auto_model!r}, a tier ({', '.join(t.name for t in tiers)}) or a served model")
    route = None
    if model != auto_model:
        route = next((t.name for t in tiers if model in (t.name, t.model)), None)
        if route is None:
            raise NotFound(f"model: {model!r} is not served here; use {auto_model!r} or one of {[t.name for t in tiers]}")
    messages = _messages(body.get("messages"))
    n = _number(body, "n", int)
    if n not in (None, 1):
        raise InvalidArgument("n", "only n=1 is supported")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise InvalidArgument("max_completion_tokens", "set max_tokens or max_completion_tokens, not both")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise InvalidArgument("stop", "expected a string or a list of strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidArgument("stream", "expected true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidArgument("stream_options", "only include_usage is supported")
    sampling = SamplingRequest(
        temperature=_number(body, "temperature"), top_p=_number(body, "top_p"),
        max_tokens=_number(body, "max_tokens", int) if body.get("max_tokens") is not None else _number(body, "max_completion_tokens", int),
        stop=stop, seed=_number(body, "seed", int),
    )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidArgument("user", "expected a string (the end user's or conversation's id)")
    req = GenerateInput(request_id, tuple(messages), sampling, route=route, session_id=session_id or user or "")
    return req, stream, bool(options.get("include_usage"))


def _decision_headers(d, cache: str | None = None) -> dict[str, str]:
    headers = {"x-triage-tier": d.tier, "x-triage-model": d.model, "x-triage-threshold": f"{d.threshold:.6g}",
               "x-triage-reason": d.reason, "x-triage-p-complex": "" if math.isnan(d.p_complex) else f"{d.p_complex:.6g}"}
    if cache is not None:
        headers["x-triage-cache"] = cache
    return headers


def _decision_json(d, cache: str | None) -> dict:
    return {"tier": d.tier, "model": d.model, "p_complex": None if math.isnan(d.p_complex) else d.p_complex,
            "threshold": d.threshold, "reason": d.reason, "degraded": d.degraded, "cache": cache}


def _usage(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _cost_json(usage) -> dict:
    """The answer's savings against the most capable tier (server/observe/costs.py)."""
    return {"cost": usage.cost, "cost_if_most_capable": usage.cost_if_most_capable,
            "saved_share": Cost(usage.cost, usage.cost_if_most_capable).saved_share}


LISTEN_BACKLOG = 2048  # pending connections (the kernel caps it at net.core.somaxconn)


class OpenAIHttp:
    """The aiohttp application and its site, on the router's loop."""

    def __init__(self, router: Router, calls: Calls, tokens: tuple[str, ...], auto_model: str = "auto", security=None):
        self.router, self.calls, self.auto_model = router, calls, auto_model
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
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and matches(token.strip().encode(), self._tokens)

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
                req = dataclasses.replace(req, trace_parent=request.headers.get("traceparent"), stream=stream)
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
            "usage": _usage(final.usage), "triage": {**_decision_json(decision, cache), **_cost_json(final.usage)},
        }
        return web.json_response(body, headers={**_decision_headers(decision, cache), "x-request-id": req.request_id})

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
                    response = web.StreamResponse(headers={**_decision_headers(decision), "x-request-id": req.request_id,
                                                           "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                    await response.prepare(request)
                    await response.write(chunk({"role": "assistant", "content": ""}))
                    head = chunk({"content": ""}).split(b'"content":""', 1)[0] + b'"content":'
                elif isinstance(event, DeltaEvent):
                    await response.write(text_chunk(event.text))
                elif isinstance(event, FinalEvent):
                    triage = {**_decision_json(decision, event.cache.status), **_cost_json(event.usage)}
                    await response.write(chunk({}, event.finish_reason, triage=triage))
                    if include_usage:
                        usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": decision.model,
                                 "choices": [], "usage": _usage(event.usage)}
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
