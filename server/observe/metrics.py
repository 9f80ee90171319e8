"""Prometheus series owned by the router (names router_*, units in the name).

Every object takes a CollectorRegistry so tests use a fresh one. vLLM's own
vllm:* series are deliberately not exposed: in-process they register in
prometheus_client's default registry, where with two engines only the last
engine's survive, unlabelled by tier. /metrics serves this registry only, and
these per-tier series are the source of truth (docs/observability.md).
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from store.writer import KINDS as STORE_KINDS

from ..types import ADAPTER_FIT_RESULTS

# From 50 us (a classification) to 120 s (a long CPU generation).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Every status the router returns on purpose (see server/errors.py), plus
# what grpc reports for a caller that gave up.
ERROR_CODES = (
    "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
    "DEADLINE_EXCEEDED", "CANCELLED", "UNAUTHENTICATED", "INTERNAL",
)
P_COMPLEX_BUCKETS = tuple(round(i / 10, 1) for i in range(1, 11))


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry, tiers: tuple[str, ...] = ()):
        """`tiers`: their per-tier series exist at 0 from the start, for
        rate() and the dashboard (`_seed`)."""
        self.registry = registry
        self._request_series()
        self._learning_series()
        self._generation_series()
        self._state_series()
        self._lookup_series()
        self._routing_series()
        self._replica_series()
        self._seed(tiers)

    def _histogram(self, name, doc, labels=(), buckets=LATENCY_BUCKETS):
        return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry)

    def _request_series(self) -> None:
        """The whole request, the loop it runs on, and the after-answer listeners."""
        # Per request, recorded once.
        self.request_seconds = self._histogram("router_request_duration_seconds", "End-to-end request duration", ("rpc", "tier", "code"))
        self.loop_lag_seconds = self._histogram(
            "router_event_loop_lag_seconds", "How late the event loop ran a timer due every 0.1 s: a stall every request shares")
        self.stream_holds = Counter("router_stream_holds_total", "Times a stream waited for a saturated event loop, so its next text "
                                    "went merged (server.busy_merge_ms, server/observe/pace.py)", registry=self.registry)
        self.gc_pause_seconds = self._histogram("router_gc_pause_seconds", "Garbage collections' durations, by generation (the event loop stops for each)",
                                          ("generation",))
        self.requests = Counter("router_requests_total", "Requests by RPC, tier, route reason and status code", ["rpc", "tier", "reason", "code"], registry=self.registry)
        self.errors = Counter("router_errors_total", "Requests that ended with a non-OK status", ["code"], registry=self.registry)
        # Present at 0 from the start, so rate() and dashboards work before the first error.
        for code in ERROR_CODES:
            self.errors.labels(code)
        self.listener_errors = Counter("router_listener_errors_total",
                                       "After-answer listeners (server/finished.py) that raised; the answer was not affected", ["listener"],
                                       registry=self.registry)

    def _learning_series(self) -> None:
        """What the routing learns from: the adapter loop; feedback and shadows are below, with the lookups."""
        # The adapter loop (server/routing/adapting.py).
        self.adapter_fits = Counter("router_adapter_fits_total", "Adapter fits by result (adopted, refused, failed)", ["result"], registry=self.registry)
        for result in ADAPTER_FIT_RESULTS:  # at 0 from the start, also with routing.adapt off (the dashboard's panel reads them)
            self.adapter_fits.labels(result)
        self.adapter_outcomes = Gauge("router_adapter_outcomes", "Outcomes the adapter routing now was fitted on (0: the prior alone)",
                                      registry=self.registry)
        self.adapter_held_out_apgr = Gauge("router_adapter_held_out_apgr",
                                           "The routing adapter's APGR on the newest quarter of its outcomes when adopted (-1: none)",
                                           registry=self.registry)
        self.adapter_held_out_apgr.set(-1.0)
        # The store (store/): what was written, failed, dropped, and waits.
        self.store_writes = Counter("router_store_writes_total", "Writes committed to the store, by kind", ["kind"], registry=self.registry)
        self.store_errors = Counter("router_store_errors_total",
                                    "Store writes or reads that failed (database unreachable), by kind; a buffered write is tried again",
                                    ["kind"], registry=self.registry)
        self.store_dropped = Counter("router_store_dropped_total",
                                     "Writes given up: the buffer was full, the router stopped, or the database refused them; by kind",
                                     ["kind"], registry=self.registry)
        self.store_buffered = Gauge("router_store_buffered", "Writes waiting for the store (routing off the request path)", registry=self.registry)
        for kind in STORE_KINDS:
            for counter in (self.store_writes, self.store_errors, self.store_dropped):
                counter.labels(kind)

    def _generation_series(self) -> None:
        """Classification, and each generation's times, tokens and cost."""
        self.classify_seconds = self._histogram("router_classify_duration_seconds", "Classifier time per request")
        self.p_complex = self._histogram("router_p_complex", "Classifier p_complex per request", buckets=P_COMPLEX_BUCKETS)
        self.overhead_seconds = self._histogram("router_routing_overhead_seconds", "RPC arrival to the request handed to the engine (validate, classify, template, tokenise)", ("tier",))
        self.queue_seconds = self._histogram("router_queue_duration_seconds", "Time queued in the engine before first scheduled", ("tier",))
        self.ttft_seconds = self._histogram("router_time_to_first_token_seconds", "RPC arrival to first token", ("tier",))
        # Observed once per streamed chunk for all the tokens it carries (a token's share of the gap).
        self.itl_seconds = TokenGapHistogram("router_inter_token_latency_seconds", "Time between consecutive output tokens",
                                             LATENCY_BUCKETS, self.registry)
        self.generate_seconds = self._histogram("router_generation_duration_seconds", "First token to last token", ("tier",))
        self.prompt_tokens_per_request = self._histogram("router_request_prompt_tokens", "Prompt tokens per request", ("tier",), TOKEN_BUCKETS)
        self.completion_tokens_per_request = self._histogram("router_request_completion_tokens", "Completion tokens per request", ("tier",), TOKEN_BUCKETS)
        self.prompt_tokens = Counter("router_prompt_tokens_total", "Prompt tokens", ["tier"], registry=self.registry)
        self.cost = Counter("router_cost_total", "What answers cost on the tier that gave them (tiers' cost in the profile; cache hits 0)",
                            ["tier"], registry=self.registry)
        self.cost_if_most_capable = Counter("router_cost_if_most_capable_total",
                                            "What the same answers would have cost on the most capable tier", registry=self.registry)
        self.completion_tokens = Counter("router_generated_tokens_total", "Generated tokens", ["tier"], registry=self.registry)
        self.degraded = Counter("router_degraded_total", "Decisions that could not follow the normal path", ["reason"], registry=self.registry)

    def _state_series(self) -> None:
        """Engines and in-flight work."""
        # State.
        self.in_flight = Gauge("router_requests_in_flight", "Requests being generated", ["tier"], registry=self.registry)
        self.engine_ready = Gauge("router_engine_ready", "1 when the tier's engine is warm and serving", ["tier", "model"], registry=self.registry)
        self.engine_load_seconds = Gauge("router_engine_load_seconds", "Time the tier's engine took to start", ["tier", "model"], registry=self.registry)
        # Read from the engine itself at scrape time: proves aborted requests
        # (deadline, cancel) really left the engine, not just the router.
        self.engine_unfinished = Gauge("router_engine_unfinished_requests", "Requests the engine still holds", ["tier"], registry=self.registry)

    def _lookup_series(self) -> None:
        """Caches, retrieval, feedback, shadows, admission."""
        # Caches and retrieval (issue: answer caching and retrieval).
        self.cache_lookups = Counter("router_cache_lookups_total", "Cache lookups by kind and result", ["kind", "result"], registry=self.registry)
        self.cache_lookup_seconds = self._histogram("router_cache_lookup_duration_seconds", "Cache lookup time per request (embedding included)")
        self.cache_entries = Gauge("router_cache_entries", "Entries held", ["kind"], registry=self.registry)
        self.cache_bytes = Gauge("router_cache_bytes", "Approximate bytes held (answers, plus vectors for semantic)", ["kind"], registry=self.registry)
        self.retrieve_seconds = self._histogram("router_retrieve_duration_seconds", "Embedding the question and searching the document index")
        self.engine_requests = Counter("router_engine_requests_total", "Requests handed to the engine (cache hits are not)", ["tier"], registry=self.registry)
        self.feedback = Counter("router_feedback_total", "Outcomes reported with the Feedback RPC, by the tier that answered",
                                ["tier", "result"], registry=self.registry)
        self.shadow_requests = Counter("router_shadow_requests_total", "Shadow requests (routing.shadow) by direction and what became of them",
                                       ["direction", "result"], registry=self.registry)
        self.shadow_outcomes = Counter("router_shadow_outcomes_total", "Shadow comparisons by direction, p_complex bucket and agreement",
                                       ["direction", "bucket", "agreed"], registry=self.registry)
        self.answers_remembered = Gauge("router_feedback_answers_remembered",
                                        "Recent answers the Feedback RPC can still take an outcome for (bounded by feedback.remember_answers)",
                                        registry=self.registry)
        self.semantic_overlap_aborts = Counter(
            "router_semantic_overlap_aborts_total",
            "Engine requests started beside a semantic cache search and aborted because it found the answer", ["tier"], registry=self.registry)
        self.engine_restarts = Counter("router_engine_restarts_total", "Dead engines started again", ["tier"], registry=self.registry)
        self.queue_depth = Gauge("router_queue_depth", "Requests waiting for a slot on the tier", ["tier"], registry=self.registry)
        self.queue_expected_wait = Gauge("router_queue_expected_wait_seconds", "Expected wait for a slot on the tier, as last estimated at admission", ["tier"], registry=self.registry)
        self.admission_rejections = Counter("router_admission_rejected_total", "Requests refused at an admission limit", ["scope"], registry=self.registry)
        self.threshold = Gauge("router_threshold", "Configured p_complex threshold", registry=self.registry)
        # Per caller (server/callers/): the configured names and "other", never a value taken from a request.
        self.caller_requests = Counter("router_caller_requests_total", "Generations admitted, by caller", ["caller"], registry=self.registry)
        self.caller_tokens = Counter("router_caller_tokens_total", "Prompt + completion tokens of finished answers, by caller", ["caller"],
                                     registry=self.registry)
        self.caller_cost = Counter("router_caller_cost_total", "Cost of finished answers (the tiers' cost unit), by caller", ["caller"],
                                   registry=self.registry)
        self.caller_rejections = Counter("router_caller_rejected_total", "Generations refused at a caller's limit", ["caller", "limit"],
                                         registry=self.registry)

    def _routing_series(self) -> None:
        """The cut points, target shares and spills."""
        # Adaptive routing (docs/routing.md): per tier above the cheapest.
        self.cut_point = Gauge("router_cut_point", "The p_complex cut into the tier in force now (moves with a target share)", ["tier"], registry=self.registry)
        self.target_share = Gauge("router_target_share", "The configured share of classifier-decided requests for the tier (-1: none)", ["tier"], registry=self.registry)
        self.window_share = Gauge("router_window_share",
                                  "Realised share of the classifier-decided requests in the routing window that went to the tier", ["tier"], registry=self.registry)
        self.spills = Counter("router_spills_total", "Requests sent to a neighbouring tier because theirs was busy, by why it was busy",
                              ["tier", "to_tier", "reason"], registry=self.registry)

    def _replica_series(self) -> None:
        """Remote replicas."""
        # Remote tiers: one series per configured `vllm serve` replica (the
        # replica label is its base URL from the config, so it stays bounded).
        self.replica_requests = Counter("router_replica_requests_total", "Generations sent to a remote replica", ["tier", "replica"], registry=self.registry)
        self.replica_errors = Counter("router_replica_errors_total", "Remote replica failures (connection, HTTP 5xx, broken stream)", ["tier", "replica"], registry=self.registry)
        self.replica_in_flight = Gauge("router_replica_in_flight", "Requests outstanding at a remote replica", ["tier", "replica"], registry=self.registry)
        self.replica_healthy = Gauge("router_replica_healthy", "1 when the replica's /health answers and it serves the tier's model", ["tier", "replica"], registry=self.registry)

    def export_sessions(self, store) -> None:
        """The session store's size and counts (sessions.SessionStore, their
        one owner), read at each scrape."""
        self.registry.register(_SessionCollector(store))

    def on_finished(self, finished) -> None:
        """The listener (finished.py): a generated answer's timings and tokens."""
        if finished.generated:
            self.record_generation(finished.decision.tier, finished.timings, finished.usage)

    def record_generation(self, tier: str, t, usage) -> None:
        """One generated answer's timings (types.Timings) and tokens."""
        self.ttft_seconds.labels(tier).observe(t.ttft_ms / 1e3)
        self.queue_seconds.labels(tier).observe(t.queue_ms / 1e3)
        self.generate_seconds.labels(tier).observe(t.generate_ms / 1e3)
        self.prompt_tokens.labels(tier).inc(usage.prompt_tokens)
        self.completion_tokens.labels(tier).inc(usage.completion_tokens)
        self.prompt_tokens_per_request.labels(tier).observe(usage.prompt_tokens)
        self.completion_tokens_per_request.labels(tier).observe(usage.completion_tokens)

    def _seed(self, tiers: tuple[str, ...]) -> None:
        from ..types import FEEDBACK_RESULTS, SHADOW_DIRECTIONS, SHADOW_RESULTS, SPILL_REASONS

        for direction in SHADOW_DIRECTIONS:
            for result in SHADOW_RESULTS:
                self.shadow_requests.labels(direction, result)
            for bucket in range(10):
                for agreed in ("true", "false"):
                    self.shadow_outcomes.labels(direction, f"{bucket / 10:.1f}", agreed)

        for tier in tiers:
            self.semantic_overlap_aborts.labels(tier)
            self.cost.labels(tier)
            for to in tiers:
                for busy in SPILL_REASONS:
                    if to != tier:
                        self.spills.labels(tier, to, busy)
            for result in FEEDBACK_RESULTS:
                self.feedback.labels(tier, result)


class TokenGapHistogram:
    """A per-tier histogram that takes one value `count` times in one call:
    a chunk of n tokens is n gaps of the same length, and a Histogram's
    observe per token cost a lock and a bucket search each, one call per
    token at a GPU's pace (benchmarks.gpu_pace). Observed on the event
    loop only; read by the scrape thread, which may see a chunk's
    count and sum a moment apart, as with any scrape racing an update."""

    labelnames = ("tier",)

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], registry: CollectorRegistry):
        self.name, self.doc, self.bounds = name, doc, tuple(buckets)
        self._children: dict[str, TokenGapHistogram.Child] = {}
        registry.register(self)

    class Child:
        def __init__(self, bounds: tuple[float, ...]):
            self.bounds = bounds
            self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
            self.sum = 0.0

        def observe(self, value: float, count: int = 1) -> None:
            self.counts[bisect.bisect_left(self.bounds, value)] += count
            self.sum += value * count

    def labels(self, tier: str) -> "TokenGapHistogram.Child":
        child = self._children.get(tier)
        if child is None:
            child = self._children[tier] = TokenGapHistogram.Child(self.bounds)
        return child

    def describe(self):
        return [HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        for tier, child in list(self._children.items()):
            running, buckets = 0, []
            for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), child.counts):
                running += n
                buckets.append((bound, running))
            family.add_metric([tier], buckets, child.sum)
        yield family


class _SessionCollector:
    def __init__(self, store):
        self.store = store

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.store
        yield GaugeMetricFamily("router_sessions", "Conversations the session store remembers now", value=len(s))
        yield CounterMetricFamily("router_session_pins", "Requests session affinity placed above their score's tier", value=s.pins)
        yield CounterMetricFamily("router_session_escalations", "Sessions moved up to a more capable tier", value=s.escalations)
        yield CounterMetricFamily("router_session_expiries", "Sessions forgotten: idle too long, or pushed out by newer ones", value=s.expiries)
