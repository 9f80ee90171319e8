"""Assemble the running service: engines, router, grpc.aio server with health
checking and reflection, and the /metrics endpoint. Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from store import Store
from store.writer import BufferedWrites, StoreThreads
from triage_proto import router_pb2

from .callers.identity import CallerBook
from .callers.fleet import FleetCounts
from .callers.ledger import Ledger
from .routing.adaptive import ShareController
from .lookup.cache import ResponseCache
from .fronts.calls import Calls
from .config import Config, ResilienceConfig, TierConfig
from .observe.costs import Costs
from .observe.pace import LoopPressure
from .tiers.engine import Engine, VllmEngine
from .fronts.auth import HEALTH_SERVICE, BearerTokenAuth, tls_credentials
from .routing.feedback import FeedbackTable, Outcomes, RecentAnswers, SharedAnswers
from .finished import Listeners
from .fronts.grpc_metrics import GrpcServerMetrics
from .observe.stalls import GcPauses, freeze_heap, thaw_heap, watch_loop_lag
from .observe.metrics import RouterMetrics
from .routing.policy import RoutingPolicy
from .request import log_line
from .router import Router
from .fronts.servicer import RouterServicer, add_to_server
from .routing.sessions import SessionStore, SharedSessions
from .routing.shadow import FinalAnswerGrader, Shadows
from .observe.stats import Stats
from .tiers.tier import Tier, Tiers
from .observe.tracing import from_environment_or_config

log = logging.getLogger("triage.app")

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name  # "router.v1.Router"
# For liveness probes: SERVING whenever the event loop answers, also while
# engines load and while draining (a probe that restarts the process must not
# fire then). Readiness uses SERVICE_NAME.
LIVENESS_NAME = f"{SERVICE_NAME}/live"


@dataclass
class App:
    config: Config
    router: Router
    tiers: Tiers
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    metrics_port: int | None
    calls: Calls | None = None  # the calls' outcomes, shared by the front doors
    _metrics_http: object = field(default=None, repr=False)
    _lag_watcher: asyncio.Task | None = field(default=None, repr=False)
    _gc_pauses: GcPauses | None = field(default=None, repr=False)
    http: object = field(default=None, repr=False)  # http_api.OpenAIHttp, when server.http_port is set
    http_port: int | None = None
    adaptation: object = field(default=None, repr=False)  # adapting.Adaptation, when routing.adapt is on
    memory: "Memory | None" = field(default=None, repr=False)  # the store, when store.url is set
    fleet_counts: FleetCounts | None = field(default=None, repr=False)  # callers' counts shared, with callers and a shared store

    async def start_http(self) -> None:
        """The OpenAI-compatible endpoint, on this loop, beside gRPC."""
        if self.http is not None:
            s = self.config.server
            self.http_port = await self.http.start(s.host, s.http_port, s.grace_seconds, reuse_port=s.workers > 1)

    async def update_health(self) -> None:
        """Per tier: `router.v1.Router/<tier>` is SERVING while the tier is
        ready (Tier.ready, the answer ListModels and routing read too).
        Overall (`""` and `router.v1.Router`): NOT_SERVING until every
        engine is warm; after that SERVING while at least one tier is up,
        since fallback still answers; NOT_SERVING while draining."""
        def status(up: bool):
            return health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING

        tiers = self.tiers
        for tier in tiers:
            await self.health.set(f"{SERVICE_NAME}/{tier.name}", status(tier.ready and not tiers.draining))
        overall = tiers.started and tiers.any_ready() and not tiers.draining
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status(overall))
        await self.health.set(LIVENESS_NAME, status(True))

    async def start_engines(self) -> None:
        if self._lag_watcher is None:
            self._lag_watcher = asyncio.create_task(watch_loop_lag(self.router.metrics.loop_lag_seconds))
            self._gc_pauses = GcPauses(self.router.metrics.gc_pause_seconds)
            self._gc_pauses.install()
            self.router.pressure.start()
        if self.adaptation is not None:  # an adapter another process adopts is routed with here too
            self.adaptation.poll()
        if self.fleet_counts is not None:
            self.fleet_counts.start()
        await self.tiers.start()
        # What is alive now (engines, models, tokenizers, indexes) lives as
        # long as the process: out of the collector's reach, so a full
        # collection under load walks only what requests allocate.
        frozen = freeze_heap()
        log.info("all tiers warm; health is SERVING (%d long-lived objects exempted from garbage collection)", frozen)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first; no new requests; in-flight ones get
        `grace` seconds, then end with UNAVAILABLE; engines shut down."""
        grace = self.config.server.grace_seconds if grace is None else grace
        # Requests still generating just before grpc's grace runs out end at
        # their next token with UNAVAILABLE rather than grpc's CANCELLED.
        await self.tiers.begin_drain(grace - 1.0)
        if self.adaptation is not None:  # a fit in flight ends with its child process
            await self.adaptation.stop()
        if self._lag_watcher is not None:
            self._lag_watcher.cancel()
            self._gc_pauses.remove()
            self.router.pressure.stop()
        started = time.monotonic()
        if self.http is not None:  # its requests drain with the gRPC ones (begin_drain above)
            await asyncio.gather(self.server.stop(grace), self.http.stop())
        else:
            await self.server.stop(grace)
        log.info("gRPC server stopped in %.1f s", time.monotonic() - started)
        started = time.monotonic()
        # The metrics endpoint's shutdown waits out its serve loop's 0.5 s
        # poll: in a thread, alongside the engines'.
        closing = [self.tiers.shutdown()]
        if self._metrics_http is not None:
            closing.append(asyncio.to_thread(self._metrics_http.shutdown))
        await asyncio.gather(*closing)
        if self.fleet_counts is not None:  # after the last answer: it was charged
            await self.fleet_counts.stop()
        if self.memory is not None:  # after the last answer: its writes are buffered
            await self.memory.close()
        thaw_heap()
        self.router.tracing.shutdown()  # flushes the spans still batched
        log.info("engines shut down in %.1f s", time.monotonic() - started)


@dataclass
class Memory:
    """The store (store.url) and its parts: what the Feedback RPC commits
    to, what buffers the writes that hold up no answer, and, with a shared
    store, the fleet's recent answers and sessions."""

    store: Store
    threads: StoreThreads
    writes: BufferedWrites
    feedback: FeedbackTable
    answers: SharedAnswers | None = None
    sessions: SharedSessions | None = None

    async def close(self) -> None:
        await self.writes.close()
        await asyncio.to_thread(self.threads.close)
        self.store.close()


def _memory(config: Config, metrics: RouterMetrics, policy: RoutingPolicy) -> Memory | None:
    """Opens the store (migrating it: StoreUnavailable or NotAStore when it
    cannot), before the server listens."""
    sc = config.store
    if not sc.url:
        return None
    store = Store(sc.url, timeout_s=sc.timeout_s, pool_size=sc.connections)
    threads = StoreThreads(store, sc.connections)
    writes = BufferedWrites(threads, sc.buffer, metrics)
    memory = Memory(store, threads, writes, FeedbackTable(store, config.feedback.max_rows))
    if store.shared:
        memory.answers = SharedAnswers(writes, threads, config.feedback.remember_seconds)
        if policy.sessions is not None:
            memory.sessions = policy.shared_sessions = SharedSessions(policy.sessions, writes, threads, sc.session_timeout_s, metrics)
    log.info("store %s (%s)", store.name, "shared: answers, sessions and adapters are the fleet's" if store.shared else "this process's")
    return memory


def make_engine(tier: TierConfig, resilience: ResilienceConfig, metrics: RouterMetrics, api_key: str | None = None) -> Engine:
    if tier.backend == "remote":
        from .tiers.remote import RemoteEngine

        return RemoteEngine(tier, resilience, metrics, api_key=api_key)
    if tier.backend == "smg":
        from .tiers.gateway import GatewayEngine

        return GatewayEngine(tier, resilience, api_key=api_key)
    return VllmEngine(tier)


def needs_embedder(config: Config) -> bool:
    return config.cache.semantic or config.retrieval.index is not None


def share_controller(config: Config, cut_points) -> ShareController:
    """The routing window: with a target share it moves the cut points;
    without one it only measures the realised shares."""
    r, names = config.routing, list(config.tiers)
    return ShareController(names, [r.target_share[n] for n in names[1:]] if r.target_share else None, cut_points,
                           window_requests=r.window_requests, window_seconds=r.window_seconds, correction=r.correction,
                           min_samples=r.min_samples)


def export_routing(policy: RoutingPolicy, config: Config, metrics: RouterMetrics) -> None:
    """Read at scrape time: the live cut points, the targets and the
    window's realised shares, per tier above the cheapest."""
    names = list(config.tiers)
    for j, name in enumerate(names[1:], start=1):
        metrics.cut_point.labels(name).set_function(lambda j=j: policy.live_cuts[j - 1])
        metrics.target_share.labels(name).set(config.routing.target_share.get(name, -1.0))
        metrics.window_share.labels(name).set_function(lambda j=j: policy.share.window_shares()[j])


def _shadows(config: Config, tiers: Tiers, memory: Memory | None, cache: ResponseCache | None, metrics: RouterMetrics,
             adaptation) -> Shadows | None:
    """Shadow evaluation, when on: graded with the semantic cache's embedding model when there is one."""
    sc = config.routing.shadow
    if not sc.enabled:
        return None
    return Shadows(sc, tiers, memory, FinalAnswerGrader(cache.embedder if cache is not None else None, sc.similarity), metrics,
                   keep_text=config.feedback.keep_text, on_stored=adaptation.outcome_stored if adaptation is not None else None)


def _adaptation(config: Config, classifier, policy: RoutingPolicy, metrics: RouterMetrics, memory: Memory | None):
    """The adapter loop, when routing.adapt is on; routing starts with the
    adapter a previous run adopted, if any."""
    if not config.routing.adapt.enabled:
        return None
    import classifier as classifiers

    from .routing.adapting import Adaptation

    adaptation = Adaptation(config.routing.adapt, memory.threads, list(config.tiers)[0], config.classifier.path, metrics,
                            use=lambda clf: policy.use_scorer(clf.score), load=classifiers.load)
    policy.use_scorer(adaptation.start(classifier).score)
    return adaptation


def _listeners(metrics: RouterMetrics, stats: Stats, tracing, sessions: SessionStore | None, tier_names, recent: RecentAnswers | None,
               keep_text: bool, shadows: Shadows | None, memory: Memory | None, ledger: Ledger) -> Listeners:
    """Everything told of a finished request (server/finished.py), in order:
    the callers' charges and the observers first, then the features that
    learn from answers."""
    listeners = [("callers", ledger.on_finished), ("metrics", metrics.on_finished), ("stats", stats.on_finished), ("log", log_line),
                 ("tracing", tracing.finish)]
    if sessions is not None:
        listeners.append(("sessions", sessions.listener(tier_names, memory.sessions if memory is not None else None)))
    if recent is not None:
        listeners.append(("recent_answers", recent.listener(keep_text, memory.answers)))
    if shadows is not None:
        listeners.append(("shadows", shadows.on_finished))
    return Listeners(listeners, metrics.listener_errors)


def _outcomes(config: Config, memory: Memory | None, recent, metrics, router, adaptation) -> Outcomes | None:
    """What the Feedback RPC records into, counted for GetStats and the adapter loop."""
    if memory is None:
        return None

    def recorded(tier: str) -> None:
        router.stats.record_feedback(tier)
        if adaptation is not None:
            adaptation.outcome_stored(tier)

    return Outcomes(memory.feedback, recent, memory.threads, metrics, config.store.timeout_s, memory.answers, recorded)


def build_app(config: Config, classifier, engines: Mapping[str, Engine] | None = None, registry: CollectorRegistry | None = None,
              embedder=None, tokens: Mapping[str, str] | Sequence[str] = (), api_keys: Mapping[str, str] | None = None,
              servicer: type[RouterServicer] = RouterServicer) -> App:
    """Everything but the engines' start. A retrieval index that is missing or
    corrupt raises retrieval.IndexError_ here, before the server listens.
    `servicer`: the gRPC servicer's class (a benchmark cuts its handlers down).
    `api_keys`: per remote tier, its replicas' key (read by __main__).
    `tokens`: the bearer tokens, each to the caller it names ("" none),
    as auth.load_tokens reads them; a plain sequence names no caller."""
    registry = registry or CollectorRegistry()
    metrics = RouterMetrics(registry, tuple(config.tiers))
    cache, retrieval = _lookups(config, metrics, embedder)
    api_keys = api_keys or {}
    engines = engines or {name: make_engine(tier, config.resilience, metrics, api_keys.get(name)) for name, tier in config.tiers.items()}
    tokens = dict(tokens) if isinstance(tokens, Mapping) else dict.fromkeys(tokens, "")
    ledger = Ledger(config.callers, metrics)
    weights = ledger.weights if config.callers else None  # none: one first-come queue, as before callers
    headroom = config.limits.caller_headroom
    tiers = Tiers([Tier(t, engines[name], config.resilience, metrics, weights, headroom) for name, t in config.tiers.items()],
                  config.limits, config.resilience, metrics, config.server.warmup_prompt, weights=weights)
    policy = _policy(config, classifier, metrics)
    memory = _memory(config, metrics, policy)
    adaptation = _adaptation(config, classifier, policy, metrics, memory)
    fb = config.feedback
    recent = RecentAnswers(fb.remember_answers, fb.remember_seconds) if memory is not None else None
    if recent is not None:
        metrics.answers_remembered.set_function(recent.__len__)
    shadows = _shadows(config, tiers, memory, cache, metrics, adaptation)
    tracing = from_environment_or_config(config.tracing)
    stats = Stats(tiers.names)
    router = Router(policy, tiers, metrics, cache=cache, retrieval=retrieval, limits=config.limits, resilience=config.resilience,
                    spill=config.routing.spill, tracing=tracing, stats=stats,
                    costs=Costs({name: t.cost for name, t in config.tiers.items()}, list(config.tiers)[-1], metrics),
                    listeners=_listeners(metrics, stats, tracing, policy.sessions, tiers.names, recent, fb.keep_text, shadows, memory, ledger),
                    on_engine_start=shadows.yield_to if shadows is not None else None, ledger=ledger,
                    pressure=LoopPressure(config.server.busy_merge_ms / 1e3, metrics.stream_holds.inc))
    book = CallerBook(tokens, config.callers)
    server = _grpc_server(config, registry, tokens)
    calls = Calls(metrics, router.stats)
    add_to_server(servicer(router, calls, _outcomes(config, memory, recent, metrics, router, adaptation), adaptation, book), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = _listen(server, config)
    metrics_http, metrics_port = None, None
    if config.server.metrics_port >= 0:
        metrics_http, _ = start_http_server(config.server.metrics_port, addr=config.server.host, registry=registry)
        metrics_port = metrics_http.server_port
    app = App(config, router, tiers, server, health_servicer, port, metrics_port, calls, metrics_http, adaptation=adaptation, memory=memory,
              fleet_counts=FleetCounts(ledger, memory.threads) if config.callers and memory is not None and memory.store.shared else None)
    if config.server.http_port >= 0:
        from .fronts.http_api import OpenAIHttp

        app.http = OpenAIHttp(router, calls, tokens, config.server.http_auto_model, config.security, book)
    tiers.on_change = app.update_health
    return app


def _lookups(config: Config, metrics: RouterMetrics, embedder) -> tuple[ResponseCache | None, object]:
    """The response cache and the retrieval service, each when configured,
    sharing one embedding model."""
    if embedder is None and needs_embedder(config):
        from .lookup.embedding import Embedder

        embedder = Embedder(threads=config.embedding.threads)
    retrieval = None
    if config.retrieval.index is not None:
        from .lookup.retrieval import RetrievalService, Retriever

        r = config.retrieval
        retrieval = RetrievalService(Retriever(r.index, embedder), embedder, r.top_k, r.max_chunk_chars, r.tiers)
        log.info("retrieval index %s: %d chunks", r.index, len(retrieval))
    cache = ResponseCache(config.cache, embedder, metrics) if (config.cache.exact or config.cache.semantic) else None
    return cache, retrieval


def _policy(config: Config, classifier, metrics: RouterMetrics) -> RoutingPolicy:
    """The score, the cut points (the profile's, else the artifact's
    threshold), the target share and the sessions, exported to /metrics."""
    cut_points = config.classifier.cut_points or (
        config.classifier.threshold if config.classifier.threshold is not None else classifier.threshold,
    )
    metrics.threshold.set(cut_points[-1])
    sc = config.routing.session
    sessions = SessionStore(sc.max_sessions, sc.idle_seconds) if sc.enabled else None
    if sessions is not None:
        metrics.export_sessions(sessions)
    policy = RoutingPolicy(
        classifier.score, cut_points, [(n, t.model) for n, t in config.tiers.items()],
        on_degraded=lambda: metrics.degraded.labels("classifier_error").inc(), share=share_controller(config, cut_points),
        conversation_turns=config.routing.conversation_turns, sessions=sessions,
    )
    export_routing(policy, config, metrics)
    return policy


def _grpc_server(config: Config, registry: CollectorRegistry, tokens: Iterable[str]) -> grpc.aio.Server:
    lim = config.limits
    options = [
        ("grpc.max_receive_message_length", lim.max_receive_message_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.max_concurrent_streams", lim.max_concurrent_streams),
        # Long CPU streams stay open; pings keep idle intermediaries from
        # dropping them, and clients may ping while a long answer streams.
        ("grpc.keepalive_time_ms", int(lim.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(lim.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Several workers share the port (server/workers.py); one alone must
        # not: a second router started on its port fails instead of
        # silently taking half its connections.
        ("grpc.so_reuseport", int(config.server.workers > 1)),
    ]
    # Metrics first, so calls refused for their credentials are counted too.
    interceptors = [GrpcServerMetrics(registry)]
    if tokens:
        interceptors.append(BearerTokenAuth(tokens, open_services=(HEALTH_SERVICE,) if config.security.health_open else ()))
    return grpc.aio.server(interceptors=interceptors, options=options)


def _listen(server: grpc.aio.Server, config: Config) -> int:
    address = f"{config.server.host}:{config.server.port}"
    port = server.add_secure_port(address, tls_credentials(config.security)) if config.security.tls_cert else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {config.server.host}:{config.server.port}")
    return port


async def serve(app: App, stop: asyncio.Event) -> None:
    """Listen at once (health NOT_SERVING, Generate UNAVAILABLE while engines
    load), load engines, serve until `stop` is set, then drain."""
    await app.update_health()  # NOT_SERVING everywhere until the engines are warm
    await app.server.start()
    await app.start_http()
    log.info("listening on %s:%d (gRPC), metrics on %s", app.config.server.host, app.port,
             f"http://{app.config.server.host}:{app.metrics_port}/metrics" if app.metrics_port else "off")
    http = f", HTTP on port {app.http_port}" if app.http_port is not None else ""
    print(f"triage: gRPC on {app.config.server.host}:{app.port}, metrics on port {app.metrics_port}{http}", flush=True)
    loader = asyncio.create_task(app.start_engines())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done and loader.exception() is not None:
        stopper.cancel()
        await app.stop(grace=0)
        raise loader.exception()
    if loader in done:  # not when a signal came while the engines were loading
        print(f"triage: ready (all {len(app.tiers)} tiers warm)", flush=True)
    await stopper
    log.info("stopping: health NOT_SERVING, draining for up to %.0f s", app.config.server.grace_seconds)
    if not loader.done():
        loader.cancel()
    await app.stop()
