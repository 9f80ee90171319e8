"""server/observe/tracing.py with the SDK's in-memory exporter: the span tree built
from the router's stage times, the caller's context as parent, an error
status for a request without an answer, and nothing at all when off. The
same against a real OTLP receiver and a real request:
tests/integration/test_adaptive_routing.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from server.observe.tracing import TRACEPARENT, Tracing, upstream_headers
from server.finished import Finished
from server.types import ChatMessage, Decision, GenerateInput, SamplingRequest, Timings, Usage

from .test_config_and_policy import ROOT

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_finished_request_is_a_tree_of_its_stages_under_the_callers_span():
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    arrived = time.perf_counter() - 0.5
    span = tracing.begin(PARENT, arrived, "chat")
    assert upstream_headers()["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")  # ours, in the caller's trace
    assert not upstream_headers()["traceparent"].endswith("00f067aa0ba902b7-01")
    timings = Timings(classify_ms=0.05, queue_ms=20, ttft_ms=300, generate_ms=200, total_ms=500, cache_ms=1.0)
    req = GenerateInput(request_id="rid", messages=(ChatMessage("user", "hi"),), sampling=SamplingRequest())
    tracing.finish(Finished(req, Decision("small", "S", 0.2, 0.45, "classifier"), "hello", Usage(30, 12), timings, "MISS", True, span,
                            arrived, arrived + 0.5, arrived + 0.3))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["triage.request"]
    assert root.parent.span_id == 0x00f067aa0ba902b7 and root.attributes["triage.tier"] == "small"
    assert root.attributes["triage.caller"] == "chat"
    assert root.attributes["gen_ai.usage.output_tokens"] == 12 and root.attributes["triage.p_complex"] == 0.2
    assert {n for n, s in spans.items() if s.parent is not None and s.parent.span_id == root.context.span_id} == {
        "classify", "cache_lookup", "queue", "first_token", "generate"}
    assert (spans["first_token"].end_time - spans["first_token"].start_time) == pytest.approx(300e6, rel=0.01)
    TRACEPARENT.set(None)


def test_a_request_without_an_answer_ends_its_span_with_the_status():
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)
    tracing.abandon(tracing.begin(None, time.perf_counter()), "UNAVAILABLE")
    (span,) = exporter.get_finished_spans()
    assert span.status.is_ok is False and span.attributes["triage.status"] == "UNAVAILABLE"
    TRACEPARENT.set(None)


def test_off_it_does_nothing_and_imports_no_opentelemetry():
    code = ("import sys; from server.observe.tracing import Tracing; t = Tracing(); assert t.begin('x', 0.0) is None; "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
