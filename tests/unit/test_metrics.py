"""The metric set: names, units, bucket resolution, and the gRPC interceptor's
standard names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from server.grpc_metrics import GrpcServerMetrics
from server.metrics import LATENCY_BUCKETS, RouterMetrics


def families(registry):
    return {m.name: m for m in registry.collect()}


def test_buckets_resolve_a_classification_and_a_long_generation():
    assert LATENCY_BUCKETS[0] <= 0.0001 < LATENCY_BUCKETS[2]  # 0.1 ms falls inside, not in the first bucket
    assert LATENCY_BUCKETS[-1] >= 120
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_router_metric_names_follow_the_conventions():
    registry = CollectorRegistry()
    RouterMetrics(registry)
    fams = families(registry)
    assert all(name.startswith("router_") for name in fams)
    for name, fam in fams.items():
        if fam.type == "counter":
            assert fam.samples == [] or all(s.name.endswith(("_total", "_created")) for s in fam.samples)
        if fam.type == "histogram":
            assert name.endswith(("_seconds", "_tokens")) or name == "router_p_complex", name
    expected = {
        "router_request_duration_seconds", "router_classify_duration_seconds", "router_routing_overhead_seconds",
        "router_queue_duration_seconds", "router_time_to_first_token_seconds", "router_inter_token_latency_seconds",
        "router_generation_duration_seconds", "router_request_prompt_tokens", "router_request_completion_tokens",
        "router_p_complex", "router_requests", "router_errors", "router_prompt_tokens", "router_generated_tokens",
        "router_requests_in_flight", "router_engine_ready", "router_engine_load_seconds", "router_threshold",
    }
    assert expected <= set(fams)
    # No label that could hold a request id or user text.
    for fam in fams.values():
        for s in fam.samples:
            assert set(s.labels) <= {"tier", "model", "rpc", "code", "reason", "le"}


def test_grpc_metric_names_are_the_standard_ones():
    registry = CollectorRegistry()
    GrpcServerMetrics(registry)
    assert {"grpc_server_started", "grpc_server_handled", "grpc_server_handling_seconds", "grpc_server_msg_sent", "grpc_server_msg_received"} <= set(families(registry))
