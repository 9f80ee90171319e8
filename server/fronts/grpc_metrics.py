"""gRPC server metrics under the names dashboards already use (the
go-grpc-prometheus / py-grpc-prometheus set), from a grpc.aio interceptor:

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}
    grpc_server_msg_received_total / grpc_server_msg_sent_total
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..observe.metrics import LATENCY_BUCKETS

_LABELS = ["grpc_type", "grpc_service", "grpc_method"]


_BY_VALUE = {c.value[0]: c.name for c in grpc.StatusCode}


# A client whose deadline passes cancels the call from its side, and the
# cancellation reaches the server a little before the server's own clock
# says the deadline passed: within this much of it, count DEADLINE_EXCEEDED.
DEADLINE_SLACK_S = 0.5


def status_name(context, exc: BaseException | None = None) -> str:
    """The status the client sees, as a name. A cancelled handler means the
    caller's deadline passed (DEADLINE_EXCEEDED) or it went away (CANCELLED)."""
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"
    code = context.code()
    if code is None:
        return "UNKNOWN" if exc is not None and not isinstance(exc, grpc.aio.AbortError) else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _BY_VALUE.get(int(code), "UNKNOWN")


class GrpcServerMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry):
        self.started = Counter("grpc_server_started_total", "RPCs started on the server", _LABELS, registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by code", _LABELS + ["grpc_code"], registry=registry)
        self.handling = Histogram("grpc_server_handling_seconds", "RPC handling time", _LABELS, buckets=LATENCY_BUCKETS, registry=registry)
        self.received = Counter("grpc_server_msg_received_total", "Messages received", _LABELS, registry=registry)
        self.sent = Counter("grpc_server_msg_sent_total", "Messages sent", _LABELS, registry=registry)
        self._wrapped: dict = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        # Handlers are per method, not per call: wrap each one once.
        key = (details.method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler):
        service, _, method = full_method.lstrip("/").rpartition("/")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, _Series(self, ("unary", service, method))),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._server_stream(handler.unary_stream, _Series(self, ("server_stream", service, method))),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming RPCs here; leave them untouched

    @contextlib.contextmanager
    def _observe(self, series: "_Series", context):
        """Count the call's start and end (with the status the client sees) and time it."""
        started = time.perf_counter()
        series.started.inc()
        series.received.inc()
        error = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            series.handled(status_name(context, error)).inc()
            series.handling.observe(time.perf_counter() - started)

    def _unary(self, behavior, series: "_Series"):
        async def wrapper(request, context):
            with self._observe(series, context):
                response = await behavior(request, context)
                series.sent.inc()
                return response

        return wrapper

    def _server_stream(self, behavior, series: "_Series"):
        async def wrapper(request, context):
            with self._observe(series, context):
                async for response in behavior(request, context):
                    series.sent.inc()
                    yield response

        return wrapper


class _Series:
    """One method's labelled series, looked up once rather than per call and
    per message (a labels() lookup takes a lock and costs more than the
    increment)."""

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]):
        self._labels = labels
        self._handled_family = metrics.handled
        self.started = metrics.started.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self._handled: dict[str, object] = {}

    def handled(self, code: str):
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self._labels, code)
        return child
