"""Status-code mapping over a real grpc.aio server on 127.0.0.1:0.

The engine here is a fake: it exists only to make the router raise on
purpose (not ready, crashing). That generation really works is shown by
tests/integration on the real vLLM CPU engines, never here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from clients import InternalError, InvalidArgumentError, UnavailableError
from server.config import load
from server.types import EngineChunk, Prompt

from .conftest import StubEngine, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


class FakeEngine(StubEngine):
    def __init__(self, tier: str, model: str, max_model_len: int):
        super().__init__(tier, model, max_model_len)
        self.crash = False
        self.crash_midway = False  # one chunk of text, then the engine dies
        self.fail_together: threading.Event | None = None  # requests wait for it, then all fail at once
        self.waiting = 0
        self.stall_after: int | None = None  # this many chunks, then nothing, for ever
        self.aborted = 0  # generations closed before their end

    async def render(self, messages):
        return Prompt([1] * sum(len(m.content.split()) for m in messages), tuple(messages))

    async def generate(self, prompt, sampling, request_id):
        if self.crash:
            raise RuntimeError("secret internal detail /etc/passwd")
        if self.fail_together is not None:
            self.waiting += 1
            while not self.fail_together.is_set():
                await asyncio.sleep(0.005)
            raise RuntimeError("the worker holding these streams was killed")
        if self.crash_midway:
            yield EngineChunk(f"{self.tier} began ", 1)
            raise RuntimeError("worker killed")
        if self.stall_after is not None:
            try:
                for i in range(self.stall_after):
                    yield EngineChunk("word ", i + 1)
                await asyncio.sleep(3600)
            finally:
                self.aborted += 1
        yield EngineChunk("ok", 1, finished=True, finish_reason="stop")


@pytest.fixture(scope="module")
def served():
    config = load(ROOT / "config/cpu.yaml").with_ports(0, -1)
    engines = {n: FakeEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    with serve_in_thread(config, engines) as (client, app):
        yield client, engines, app.router.metrics.registry


def test_unready_tier_falls_back_and_both_unready_is_unavailable(served):
    client, engines, _ = served
    engines["small"].ready = False
    try:
        r = client.generate("What is the capital of Spain?", route="small", cache="off")
        assert r.decision.tier == 2 and r.decision.degraded and r.decision.reason == "fallback"
        engines["large"].ready = False
        with pytest.raises(UnavailableError, match="no tier can serve"):
            client.generate("What is the capital of Spain?", route="small", cache="off")
    finally:
        engines["small"].ready = engines["large"].ready = True


def test_engine_crash_falls_back_before_the_first_token_without_leaking_details(served):
    client, engines, _ = served
    engines["large"].crash = True
    try:
        r = client.generate("hello there", route="large", request_id="req-123", cache="off")
        assert r.decision.tier == 1 and r.decision.degraded  # answered by small
        engines["small"].crash = True
        with pytest.raises(UnavailableError) as err:
            client.generate("hello again", route="large", request_id="req-124", cache="off")
    finally:
        engines["large"].crash = engines["small"].crash = False
    assert "passwd" not in err.value.message and "Traceback" not in err.value.message


def test_an_engine_that_dies_midway_falls_back_for_a_unary_caller_and_is_unavailable_for_a_stream(served):
    """A unary caller has seen nothing before the whole answer: the tier's
    partial text is dropped and another tier answers from the start
    (degraded). A streaming caller has seen text: UNAVAILABLE, never a
    second answer spliced onto the first."""
    client, engines, _ = served
    client.generate("a success resets the tier's breaker", route="large", cache="off")
    engines["large"].crash_midway = True
    try:
        r = client.generate("hello there", route="large", cache="off")
        assert (r.text, r.decision.tier_name, r.decision.reason, r.decision.degraded) == ("ok", "small", "fallback", True)
        with pytest.raises(UnavailableError, match="failed while answering"):
            list(client.generate_stream("hello there", route="large", cache="off"))
    finally:
        engines["large"].crash_midway = False


def test_streams_that_fail_together_are_one_incident_for_the_breaker(served, caplog):
    """Six requests under way on one tier fail at once (one worker of a
    gateway's pool killed): each falls back, but they are one failure to
    the tier's breaker (threshold 3), so the next request is the tier's own.
    Before, the six opened the circuit, and every request for the next
    15 s fell back. The log has one line per failed request and one
    traceback for the incident (before: six)."""
    caplog.set_level("ERROR", logger="triage.request")
    client, engines, _ = served
    client.generate("a success resets the tier's breaker", route="large", cache="off")
    engines["large"].fail_together, engines["large"].waiting = threading.Event(), 0
    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.generate, f"question {n}", route="large", cache="off") for n in range(6)]
            deadline = time.monotonic() + 10
            while engines["large"].waiting < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engines["large"].waiting == 6
            engines["large"].fail_together.set()
            fell = [(f.result().decision.tier_name, f.result().decision.reason) for f in futures]
    finally:
        engines["large"].fail_together = None
    assert fell == [("small", "fallback")] * 6
    failed = [r for r in caplog.records if "tier large engine failed" in r.getMessage()]
    assert (len(failed), sum(r.exc_info is not None for r in failed)) == (6, 1)
    after = client.generate("the worker is gone; the pool still serves", route="large", cache="off")
    assert (after.decision.tier_name, after.decision.reason, after.decision.degraded) == ("large", "override", False)


@pytest.mark.parametrize("chunks", [0, 3])
def test_an_engine_that_stalls_ends_at_the_tiers_ceiling_and_is_aborted(chunks):
    """The tier's generation ceiling (one timer per answer) ends a stalled
    generation, before its first chunk or after a few, with
    DEADLINE_EXCEEDED naming it, and closes the engine's generation."""
    config = load(ROOT / "config/cpu.yaml", ["tiers.large.generation_timeout_s=0.5"]).with_ports(0, -1)
    engines = {n: FakeEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    engines["large"].stall_after = chunks
    with serve_in_thread(config, engines) as (client, _):
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            list(client.generate_stream("hello", route="large", cache="off"))
        took = time.monotonic() - started
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "tier large stopped generating at its 0.5 s ceiling" in err.value.message
    assert 0.45 < took < 3.0
    assert engines["large"].aborted == 1


def test_an_engine_that_cannot_render_falls_back_to_the_other_tier(served, monkeypatch):
    """A remote replica lost between two health checks fails at /tokenize:
    that is the tier failing before its first token, not an internal error."""
    from server.tiers.upstream import UpstreamError

    client, engines, _ = served

    async def unreachable(messages):
        raise UpstreamError("tier large: replica http://127.0.0.1:9: ConnectError")

    monkeypatch.setattr(engines["large"], "render", unreachable)
    r = client.generate("hello", route="large", cache="off")
    assert r.text == "ok"
    assert (r.decision.tier, r.decision.reason, r.decision.degraded) == (1, "fallback", True)  # TIER_SMALL


def test_unexpected_error_is_internal_with_request_id_and_no_details(served, monkeypatch):
    client, engines, _ = served

    async def broken(messages):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(engines["small"], "render", broken)
    with pytest.raises(InternalError) as err:
        client.generate("hello", route="small", request_id="req-125", cache="off")
    assert "req-125" in err.value.message
    assert "passwd" not in err.value.message and "Traceback" not in err.value.message


def test_unknown_route_enum_is_invalid_argument(served):
    client, _, registry = served
    from triage_proto import router_pb2 as pb

    req = pb.GenerateRequest(messages=[pb.Message(role="user", content="hi")], route=7)
    with pytest.raises(InvalidArgumentError, match="route"):
        client.generate(req, timeout=5)


def test_invalid_argument_names_the_field(served):
    client, _, registry = served
    with pytest.raises(InvalidArgumentError, match="sampling.top_p"):
        client.generate("hi", top_p=0.0)
    with pytest.raises(InvalidArgumentError, match="request_id"):
        client.generate("hi", request_id="x" * 500)


def test_classify_and_list_models_without_engines(served):
    client, _, registry = served
    r = client.classify("What is the capital of France?")
    assert r.decision.reason == "classifier" and r.classify_ms > 0
    assert [t.model for t in client.list_models().tiers] == ["SmolLM2-135M-Instruct"] * 2


def _handled(registry, method: str, code: str) -> float:
    labels = {"grpc_code": code, "grpc_method": method, "grpc_service": "router.v1.Router", "grpc_type": "unary"}
    return registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


def test_grpc_interceptor_counts_calls_by_code(served):
    client, _, registry = served
    ok, invalid = _handled(registry, "Classify", "OK"), _handled(registry, "Generate", "INVALID_ARGUMENT")
    errors = registry.get_sample_value("router_errors_total", {"code": "INVALID_ARGUMENT"})
    client.classify("hello")
    with pytest.raises(InvalidArgumentError):
        client.generate("hi", top_p=0.0)
    # Counted as each handler finishes, which may be just after the client has its answer.
    deadline = time.monotonic() + 5
    while _handled(registry, "Generate", "INVALID_ARGUMENT") < invalid + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _handled(registry, "Classify", "OK") == ok + 1
    assert _handled(registry, "Generate", "INVALID_ARGUMENT") == invalid + 1
    assert registry.get_sample_value("router_errors_total", {"code": "INVALID_ARGUMENT"}) == errors + 1


def test_get_stats_counts_statuses(served):
    client, _, registry = served
    before = client.stats()
    with pytest.raises(InvalidArgumentError):
        client.generate("hi", top_p=0.0)
    expected = before.requests_by_code.get("INVALID_ARGUMENT", 0) + 1
    deadline = time.monotonic() + 5  # counted as the handler finishes, just after the client has its answer
    while (stats := client.stats()).requests_by_code.get("INVALID_ARGUMENT", 0) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stats.requests_by_code["INVALID_ARGUMENT"] == expected  # this test's own refusal, once
    assert stats.total_requests >= before.total_requests + 2  # and the first GetStats call itself
    assert "uptime" in stats.summary


def test_retrieval_without_an_index_is_failed_precondition(served):
    client, _, _ = served
    from clients import TriageError

    with pytest.raises(TriageError) as err:
        client.generate("What is in my documents?", retrieval=True)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "retrieval" in err.value.message


def test_revert_adapter_without_routing_adapt_is_failed_precondition(served):
    client, _, _ = served
    from clients import TriageError

    with pytest.raises(TriageError) as err:
        client.revert_adapter("prior")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "routing.adapt is off" in err.value.message
    assert not client.stats().HasField("adapter")
