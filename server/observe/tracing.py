"""OpenTelemetry traces: one span per answered request, with a child span per
stage the router already times (classify, retrieve, cache lookup, engine
queue, first token, generate), exported over OTLP when configured.

Off by default, and free when off: `begin` returns None at once and the
opentelemetry packages are not even imported. When on, nothing is timed
twice: the stage spans are built once the request has finished, from the
stage times the router measured anyway (`Timings`).

The caller's W3C trace context (`traceparent`, from gRPC metadata or an HTTP
header) becomes the request span's parent; the request span's own context is
put in `TRACEPARENT` for the remote and gateway backends to send upstream,
so what a tier's servers trace hangs under it.
Attributes: tier, model, p_complex, the rule, cache status, token counts;
never the question's text.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time

log = logging.getLogger("triage.tracing")

# The traceparent to send to a tier's servers for the request being served.
TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _wall_ns(perf: float) -> int:
    """A perf_counter instant as wall-clock nanoseconds (what spans take)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


def upstream_headers() -> dict[str, str]:
    """Headers for an HTTP call to a tier's servers: the request's trace context, if any."""
    value = TRACEPARENT.get()
    return {"traceparent": value} if value else {}


class Tracing:
    """`record(ctx, ...)` once per finished request; no-op unless enabled."""

    def __init__(self, config=None, exporter=None):
        """`config`: TracingConfig (otlp_endpoint, sample_ratio,
        service_name); `exporter`: a span exporter to use instead (tests)."""
        self.enabled = exporter is not None or (config is not None and config.otlp_endpoint is not None)
        self._tracer = None
        self._provider = None
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        ratio = config.sample_ratio if config is not None else 1.0
        name = config.service_name if config is not None else "triage"
        self._provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=ParentBased(TraceIdRatioBased(ratio)))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint.rstrip("/") + "/v1/traces")
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("triage.router")

    def begin(self, trace_parent: str | None, arrived_perf: float, caller: str = ""):
        """The request's span, started at its arrival, as the parent of
        what its tier's servers do (their traceparent is this span's); None
        when tracing is off. It names its caller from the start, so a
        request refused at a caller's limit shows whose it was."""
        if not self.enabled:
            return None
        from opentelemetry.trace import set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        parent = propagator.extract({"traceparent": trace_parent}) if trace_parent and _TRACEPARENT.fullmatch(trace_parent) else None
        span = self._tracer.start_span("triage.request", context=parent, start_time=_wall_ns(arrived_perf),
                                       attributes={"triage.caller": caller} if caller else None)
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=set_span_in_context(span))
        TRACEPARENT.set(carrier.get("traceparent"))
        return span

    def finish(self, finished) -> None:
        """The listener (finished.py): attributes and one child span per
        timed stage, from the times the router measured; then the request
        span ends."""
        span = finished.span
        if span is None:
            return
        request_id, decision, timings, usage = finished.req.request_id, finished.decision, finished.timings, finished.usage
        cache_status, arrived_perf, done_perf = finished.cache_status, finished.arrived, finished.done
        first_token_perf = finished.first_token_at
        from opentelemetry.trace import set_span_in_context

        # Every instant from the request span's own start, so no child can
        # fall outside it by a clock conversion's rounding.
        start = span.start_time
        at = lambda perf: start + int((perf - arrived_perf) * 1e9)  # noqa: E731
        end = at(done_perf)
        span.set_attributes({
            "triage.request_id": request_id, "triage.tier": decision.tier, "triage.model": decision.model,
            "triage.reason": decision.reason, "triage.degraded": decision.degraded, "triage.threshold": decision.threshold,
            "triage.cache": cache_status, "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
        })
        if decision.p_complex == decision.p_complex:  # not NaN
            span.set_attribute("triage.p_complex", decision.p_complex)
        child = set_span_in_context(span)
        cursor = start
        for name, ms in (("classify", timings.classify_ms), ("retrieve", timings.retrieve_ms), ("cache_lookup", timings.cache_ms)):
            if ms > 0:
                self._tracer.start_span(name, context=child, start_time=cursor).end(end_time=cursor + int(ms * 1e6))
                cursor += int(ms * 1e6)
        if first_token_perf is not None and cache_status not in ("EXACT", "SEMANTIC"):
            first = at(first_token_perf)
            if timings.queue_ms > 0:
                self._tracer.start_span("queue", context=child, start_time=max(cursor, first - int(timings.queue_ms * 1e6))).end(end_time=first)
            self._tracer.start_span("first_token", context=child, start_time=start).end(end_time=first)
            self._tracer.start_span("generate", context=child, start_time=first).end(end_time=end)
        span.end(end_time=end)

    def abandon(self, span, status: str) -> None:
        """A request that ended without an answer: its span, marked with the status."""
        if span is None or not span.is_recording():
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("triage.status", status)
        span.set_status(Status(StatusCode.ERROR, status))
        span.end()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def from_environment_or_config(config) -> Tracing:
    """Tracing as configured (`tracing.otlp_endpoint`), or from the
    standard OTEL_EXPORTER_OTLP_ENDPOINT when the profile leaves it unset."""
    if config is not None and config.otlp_endpoint is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        import dataclasses

        config = dataclasses.replace(config, otlp_endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    return Tracing(config)
