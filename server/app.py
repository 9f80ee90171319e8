"""Assemble the running service: engines, router, grpc.aio server with health
checking and reflection, and the /metrics endpoint. Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from triage_proto import router_pb2, router_pb2_grpc

from .cache import ResponseCache
from .config import Config
from .engine import Engine, VllmEngine
from .grpc_metrics import GrpcServerMetrics
from .metrics import RouterMetrics
from .policy import RoutingPolicy
from .router import Router
from .servicer import RouterServicer
from .types import ChatMessage, EffectiveSampling

log = logging.getLogger("triage.app")

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name  # "router.v1.Router"


@dataclass
class App:
    config: Config
    router: Router
    engines: Mapping[str, Engine]
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    metrics_port: int | None
    _metrics_http: object = field(default=None, repr=False)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start_engines(self) -> None:
        """Start engines one after the other (each reserves its KV cache),
        warm each up, then report SERVING."""
        m = self.router.metrics
        for name, engine in self.engines.items():
            await engine.start()
            m.engine_load_seconds.labels(name, engine.model).set(engine.load_seconds)
            await warm_up(engine, self.config.server.warmup_prompt)
            if hasattr(engine, "mark_ready"):
                engine.mark_ready()
            m.engine_ready.labels(name, engine.model).set(1)
        await self.set_serving(True)
        log.info("all tiers warm; health is SERVING")

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.server.grace_seconds if grace is None else grace
        await self.set_serving(False)
        await self.server.stop(grace)
        for name, engine in self.engines.items():
            await engine.shutdown()
            self.router.metrics.engine_ready.labels(name, engine.model).set(0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()


async def warm_up(engine: Engine, prompt: str) -> None:
    """One tiny greedy generation, so the first user request pays no warm-up."""
    sampling = EffectiveSampling(0.0, 1.0, 0, 4, (), None, 1.0)
    ids = engine.render([ChatMessage("user", prompt)])
    async for _ in engine.generate(ids, sampling, f"warmup-{engine.tier}"):
        pass


def needs_embedder(config: Config) -> bool:
    return config.cache.semantic or config.retrieval.index is not None


def build_app(config: Config, classifier, engines: Mapping[str, Engine] | None = None, registry: CollectorRegistry | None = None,
              embedder=None) -> App:
    """Everything but the engines' start. A retrieval index that is missing or
    corrupt raises retrieval.IndexError_ here, before the server listens."""
    registry = registry or CollectorRegistry()
    metrics = RouterMetrics(registry)
    if embedder is None and needs_embedder(config):
        from .embedding import Embedder

        embedder = Embedder()
    retrieval = None
    if config.retrieval.index is not None:
        from .retrieval import RetrievalService, Retriever

        r = config.retrieval
        retrieval = RetrievalService(Retriever(r.index, embedder), embedder, r.top_k, r.max_chunk_chars, r.tiers)
        log.info("retrieval index %s: %d chunks", r.index, len(retrieval._retriever))
    cache = ResponseCache(config.cache, embedder, metrics) if (config.cache.exact or config.cache.semantic) else None
    threshold = config.classifier.threshold if config.classifier.threshold is not None else classifier.threshold
    metrics.threshold.set(threshold)
    engines = engines or {name: VllmEngine(tier) for name, tier in config.tiers.items()}
    for name, engine in engines.items():
        metrics.engine_ready.labels(name, engine.model).set(0)
        metrics.engine_unfinished.labels(name).set_function(engine.unfinished_requests)
    policy = RoutingPolicy(
        classifier.score, threshold, {n: t.model for n, t in config.tiers.items()},
        on_degraded=lambda: metrics.degraded.labels("classifier_error").inc(),
    )
    router = Router(policy, engines, config.tiers, metrics, cache=cache, retrieval=retrieval)

    server = grpc.aio.server(interceptors=[GrpcServerMetrics(registry)])
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.server.host}:{config.server.port}")
    if port == 0:
        raise OSError(f"cannot listen on {config.server.host}:{config.server.port}")

    metrics_http, metrics_port = None, None
    if config.server.metrics_port >= 0:
        metrics_http, _ = start_http_server(config.server.metrics_port, addr=config.server.host, registry=registry)
        metrics_port = metrics_http.server_port
    return App(config, router, engines, server, health_servicer, port, metrics_port, metrics_http)


async def serve(app: App, stop: asyncio.Event) -> None:
    """Listen at once (health NOT_SERVING, Generate UNAVAILABLE while engines
    load), load engines, serve until `stop` is set, then drain."""
    await app.set_serving(False)
    await app.server.start()
    log.info("listening on %s:%d (gRPC), metrics on %s", app.config.server.host, app.port,
             f"http://{app.config.server.host}:{app.metrics_port}/metrics" if app.metrics_port else "off")
    print(f"triage: gRPC on {app.config.server.host}:{app.port}, metrics on port {app.metrics_port}", flush=True)
    loader = asyncio.create_task(app.start_engines())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done and loader.exception() is not None:
        stopper.cancel()
        await app.stop(grace=0)
        raise loader.exception()
    print("triage: ready (both tiers warm)", flush=True)
    await stopper
    log.info("stopping: health NOT_SERVING, draining for up to %.0f s", app.config.server.grace_seconds)
    if not loader.done():
        loader.cancel()
    await app.stop()
