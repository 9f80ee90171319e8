"""The metric set: names, units, bucket resolution, and the gRPC interceptor's
standard names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from server.fronts.grpc_metrics import GrpcServerMetrics
from server.observe.metrics import LATENCY_BUCKETS, RouterMetrics, TokenGapHistogram


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


# Every label any router_* series may carry, each with bounded values: never
# a request id or user text. (A replica is a URL from the config; to_tier a
# tier name.)
ALLOWED_LABELS = {"tier", "to_tier", "model", "rpc", "code", "reason", "kind", "result", "scope", "replica", "generation",  # generation: 0, 1 or 2
                  "direction", "bucket", "agreed",  # shadow: up/down, ten p_complex buckets (and nan), true/false
                  "listener",  # the after-answer listeners app.py lists (server/finished.py): at most eight
                  "caller", "limit"}  # the profile's callers and "other" (server/callers/identity.py); the four limits


def test_every_router_metric_declares_only_bounded_labels():
    """Checked on the declared label names, so a labelled series that has
    no sample yet (most of them, in a fresh registry) is checked too."""
    from prometheus_client.metrics import MetricWrapperBase

    metrics = RouterMetrics(CollectorRegistry())
    declared = {m._name: set(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    declared |= {m.name: set(m.labelnames) for m in vars(metrics).values() if isinstance(m, TokenGapHistogram)}
    assert len(declared) == len(families(metrics.registry)) >= 30  # every family, not only those with samples
    for name, labels in declared.items():
        assert labels <= ALLOWED_LABELS, (name, labels - ALLOWED_LABELS)
    assert declared["router_requests"] == {"rpc", "tier", "reason", "code"}
    assert declared["router_time_to_first_token_seconds"] == {"tier"}
    assert declared["router_threshold"] == set()


def test_grpc_metric_names_are_the_standard_ones():
    registry = CollectorRegistry()
    GrpcServerMetrics(registry)
    assert {"grpc_server_started", "grpc_server_handled", "grpc_server_handling_seconds", "grpc_server_msg_sent", "grpc_server_msg_received"} <= set(families(registry))


class _Context:
    def __init__(self, remaining):
        self._remaining = remaining

    def time_remaining(self):
        return self._remaining


def test_a_cancellation_at_the_callers_deadline_counts_as_deadline_exceeded():
    """The client's own deadline fires first and cancels the call, so the
    server sees a cancellation with a few milliseconds still on its clock:
    that is DEADLINE_EXCEEDED, not CANCELLED (before: every one of them
    counted as CANCELLED)."""
    import asyncio

    from server.fronts.grpc_metrics import status_name

    assert status_name(_Context(0.02), asyncio.CancelledError()) == "DEADLINE_EXCEEDED"
    assert status_name(_Context(-0.01), asyncio.CancelledError()) == "DEADLINE_EXCEEDED"
    assert status_name(_Context(30.0), asyncio.CancelledError()) == "CANCELLED"  # the caller went away
    assert status_name(_Context(None), asyncio.CancelledError()) == "CANCELLED"  # no deadline at all


def test_event_loop_lag_records_a_stall():
    """A callback that blocks the loop for 0.3 s shows as one observation
    of about 0.3 s; the quiet ticks around it as well under 50 ms."""
    import asyncio
    import time

    from prometheus_client import CollectorRegistry

    from server.observe.stalls import watch_loop_lag
    from server.observe.metrics import RouterMetrics

    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)

    async def go():
        watcher = asyncio.create_task(watch_loop_lag(metrics.loop_lag_seconds, interval=0.02))
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # a stall, as a long render on the loop would be
        await asyncio.sleep(0.1)
        watcher.cancel()

    asyncio.run(go())
    get = lambda name, **labels: registry.get_sample_value(name, labels)
    count = get("router_event_loop_lag_seconds_count")
    stalled = count - get("router_event_loop_lag_seconds_bucket", le="0.25")
    assert count >= 5 and stalled == 1
    assert 0.25 < get("router_event_loop_lag_seconds_sum") < 0.25 + 0.05 * count


def test_garbage_collections_are_timed_by_generation_while_installed():
    import gc

    from prometheus_client import CollectorRegistry

    from server.observe.metrics import RouterMetrics
    from server.observe.stalls import GcPauses

    registry = CollectorRegistry()
    pauses = GcPauses(RouterMetrics(registry).gc_pause_seconds)

    def count(generation: str) -> float:
        return registry.get_sample_value("router_gc_pause_seconds_count", {"generation": generation})

    assert count("2") == 0  # present from the start
    pauses.install()
    try:
        before = count("2")
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.remove()
    assert count("2") - before == 2
    assert registry.get_sample_value("router_gc_pause_seconds_sum", {"generation": "2"}) > 0
    gc.collect(2)  # removed: no longer observed
    assert count("2") - before == 2


def test_a_gap_observed_n_times_at_once_is_exposed_as_n_observations():
    """TokenGapHistogram (one call per streamed chunk) against
    prometheus_client's Histogram observed once per token: the same text."""
    from prometheus_client import Histogram, generate_latest

    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = TokenGapHistogram("router_gap_seconds", "Gaps", LATENCY_BUCKETS, ours_registry)
    theirs = Histogram("router_gap_seconds", "Gaps", ["tier"], buckets=LATENCY_BUCKETS, registry=theirs_registry)
    for tier, gap, n in (("small", 0.0001, 3), ("small", 0.03, 1), ("small", 0.025, 2), ("large", 500.0, 4), ("large", 0.0, 1)):
        ours.labels(tier).observe(gap, n)
        for _ in range(n):
            theirs.labels(tier).observe(gap)

    def text(registry):
        return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)

    assert text(ours_registry) == text(theirs_registry)
