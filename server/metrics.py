"""Prometheus series owned by the router (names router_*, units in the name).

Every object takes a CollectorRegistry so tests use a fresh one. vLLM's own
vllm:* series are not relied upon: with two engines in one process only the
last engine's survive, so these per-tier series are the source of truth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 50 us (a classification) to 120 s (a long CPU generation).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "router_requests_total", "Requests by tier, route reason and gRPC status code",
            ["rpc", "tier", "reason", "code"], registry=registry,
        )
        self.request_seconds = Histogram(
            "router_request_duration_seconds", "End-to-end request duration",
            ["rpc", "tier", "code"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.classify_seconds = Histogram(
            "router_classify_duration_seconds", "Classifier time per request",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.p_complex = Histogram(
            "router_p_complex", "Classifier p_complex per request",
            buckets=tuple(i / 10 for i in range(1, 11)), registry=registry,
        )
        self.ttft_seconds = Histogram(
            "router_time_to_first_token_seconds", "RPC arrival to first token",
            ["tier"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_seconds = Histogram(
            "router_queue_duration_seconds", "Time queued in the engine before scheduling",
            ["tier"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.generate_seconds = Histogram(
            "router_generation_duration_seconds", "First token to last token",
            ["tier"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.prompt_tokens = Counter("router_prompt_tokens_total", "Prompt tokens", ["tier"], registry=registry)
        self.completion_tokens = Counter("router_generated_tokens_total", "Generated tokens", ["tier"], registry=registry)
        self.in_flight = Gauge("router_requests_in_flight", "Requests being generated", ["tier"], registry=registry)
        self.engine_ready = Gauge("router_engine_ready", "1 when the tier's engine is warm and serving", ["tier", "model"], registry=registry)
        self.engine_load_seconds = Gauge("router_engine_load_seconds", "Time the tier's engine took to start", ["tier", "model"], registry=registry)
        # Read from the engine itself at scrape time: proves aborted requests
        # (deadline, cancel) really left the engine, not just the router.
        self.engine_unfinished = Gauge("router_engine_unfinished_requests", "Requests the engine still holds", ["tier"], registry=registry)
        self.threshold = Gauge("router_threshold", "Configured p_complex threshold", registry=registry)
        self.degraded = Counter("router_degraded_total", "Decisions that could not follow the normal path", ["reason"], registry=registry)
