"""router.v1.Router over gRPC: protos in, plain types to the router core,
protos out. Also the one place where errors become status codes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import time
from typing import AsyncIterator

import grpc

from triage_proto import router_pb2 as pb
from triage_proto import router_pb2_grpc

from ..callers.identity import CallerBook
from ..config import OTHER_CALLER
from ..lookup.cache import CACHE_MODES, CACHE_STATUSES
from .calls import Calls
from ..errors import FailedPrecondition, InvalidArgument
from ..routing.feedback import Outcomes, check_feedback
from .grpc_metrics import status_name
from ..router import Router
from ..types import ROLE_ALIASES, ChatMessage, Decision, DecisionEvent, DeltaEvent, EffectiveSampling, FinalEvent, GenerateInput, SamplingRequest, Timings, Usage

log = logging.getLogger("triage.servicer")

# The request being served, set once when the RPC starts (the client's id,
# or one made here): the error mapper, the log and the router see the same.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Each enum is defined once, in the proto; the plain names are derived from
# its value names (CACHE_MODE_EXACT_ONLY <-> "exact_only", CACHE_SEMANTIC <-> "SEMANTIC").
_CACHE_MODE_FROM_PB = {pb.CacheMode.Value(f"CACHE_MODE_{m.upper()}"): m for m in CACHE_MODES}
_CACHE_STATUS_TO_PB = {s: pb.CacheStatus.Value(f"CACHE_{s}") for s in CACHE_STATUSES}


# ---- bytes -> proto -----------------------------------------------------------

class Malformed:
    """What the servicer receives for bytes that do not parse as the request
    type (truncated or corrupt wire bytes, invalid UTF-8 in a string field):
    grpc would answer a deserializer's exception with UNKNOWN and a
    traceback in the log, so the deserializer returns this instead and the
    one error mapper answers INVALID_ARGUMENT, counted like any other."""

    def __init__(self, type_name: str):
        self.type_name = type_name


def _tolerant(message_class):
    type_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception:  # DecodeError, and whatever else bad bytes raise
            return Malformed(type_name)

    return parse


def add_to_server(servicer: "RouterServicer", server: grpc.aio.Server) -> None:
    """Register the servicer as the generated add_RouterServicer_to_server
    does, from the service descriptor, but with deserializers that never raise."""
    service = pb.DESCRIPTOR.services_by_name["Router"]
    handlers = {}
    for method in service.methods:
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


# ---- proto -> plain -------------------------------------------------------

def _messages(msgs) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(ROLE_ALIASES.get(m.role, m.role), m.content) for m in msgs)


def _sampling(s: pb.SamplingParams) -> SamplingRequest:
    def opt(name):
        return getattr(s, name) if s.HasField(name) else None

    return SamplingRequest(
        temperature=opt("temperature"),
        top_p=opt("top_p"),
        top_k=opt("top_k"),
        max_tokens=opt("max_tokens"),
        stop=tuple(s.stop),
        seed=opt("seed"),
        repetition_penalty=opt("repetition_penalty"),
    )


def _request(req: pb.GenerateRequest, tiers: tuple[str, ...], deadline_s: float | None = None, metadata=(), stream: bool = True,
             caller: str = OTHER_CALLER) -> GenerateInput:
    """Decode only; every check on the values is validation.check_request's."""
    ends = {pb.TIER_UNSPECIFIED: None, pb.TIER_SMALL: tiers[0], pb.TIER_LARGE: tiers[-1]}
    if req.route not in ends:
        raise InvalidArgument("route", f"unknown tier value {req.route}")
    if req.cache_mode not in _CACHE_MODE_FROM_PB:
        raise InvalidArgument("cache_mode", f"unknown cache mode value {req.cache_mode}")
    route = req.route_name or ends[req.route]
    retrieval = req.retrieval
    return GenerateInput(
        request_id=REQUEST_ID.get(),
        messages=_messages(req.messages),
        sampling=_sampling(req.sampling),
        route=route,
        threshold=req.threshold if req.HasField("threshold") else None,
        cache_mode=_CACHE_MODE_FROM_PB[req.cache_mode],
        retrieval=retrieval.enabled if retrieval.HasField("enabled") else None,
        retrieval_top_k=retrieval.top_k if retrieval.HasField("top_k") else None,
        deadline_s=deadline_s,
        trace_parent=next((v for k, v in metadata or () if k == "traceparent"), None),
        session_id=req.session_id,
        stream=stream,
        caller=caller,
    )


def tier_enum(name: str, tiers: tuple[str, ...]) -> int:
    """The proto's two ends; a tier in between is TIER_UNSPECIFIED (read tier_name)."""
    return pb.TIER_SMALL if name == tiers[0] else pb.TIER_LARGE if name == tiers[-1] else pb.TIER_UNSPECIFIED


# ---- plain -> proto -------------------------------------------------------

def _decision(d: Decision, tiers: tuple[str, ...]) -> pb.RoutingDecision:
    return pb.RoutingDecision(
        tier=tier_enum(d.tier, tiers), tier_name=d.tier, model=d.model, p_complex=0.0 if math.isnan(d.p_complex) else d.p_complex,
        threshold=d.threshold, reason=d.reason, degraded=d.degraded,
    )


def _timings(t: Timings) -> pb.Timings:
    return pb.Timings(classify_ms=t.classify_ms, queue_ms=t.queue_ms, ttft_ms=t.ttft_ms, generate_ms=t.generate_ms,
                      total_ms=t.total_ms, cache_ms=t.cache_ms, retrieve_ms=t.retrieve_ms, routing_ms=t.routing_ms)


def _cache(event: FinalEvent) -> pb.CacheInfo:
    # The similarity means something only for a semantic hit (the proto says so).
    similarity = event.cache.similarity if event.cache.status == "SEMANTIC" else 0.0
    return pb.CacheInfo(status=_CACHE_STATUS_TO_PB[event.cache.status], similarity=similarity)


def _retrieval(event: FinalEvent) -> pb.RetrievalInfo | None:
    r = event.retrieval
    if r is None:
        return None
    sources = [pb.Source(document=h.chunk.document, chunk=h.chunk.chunk, score=h.score) for h in r.hits]
    return pb.RetrievalInfo(sources=sources, dropped=r.dropped)


def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cost=u.cost, cost_if_most_capable=u.cost_if_most_capable)


def _effective(s: EffectiveSampling) -> pb.EffectiveSampling:
    out = pb.EffectiveSampling(
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
        stop=list(s.stop), repetition_penalty=s.repetition_penalty,
    )
    if s.seed is not None:
        out.seed = s.seed
    return out


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router, calls: Calls, outcomes: Outcomes | None = None, adaptation=None, callers: CallerBook | None = None):
        self.router = router
        self.callers = callers  # None or empty: every call is OTHER_CALLER
        self.calls = calls
        self.tiers = router.tiers.names
        self.outcomes = outcomes  # None: no feedback store configured
        self.adaptation = adaptation  # None: routing.adapt is off

    @contextlib.asynccontextmanager
    async def _rpc(self, rpc: str, context: grpc.aio.ServicerContext, request=None):
        """The call's outcome (calls.py: request id, status, counting), in
        REQUEST_ID for everything below; a failure becomes `context.abort`
        with its status. AbortError and CancelledError pass through
        untouched: when the caller's deadline passes or it goes away, grpc
        cancels this task, and the cancellation must reach the engine so it
        aborts the request (the client sees DEADLINE_EXCEEDED or CANCELLED
        from grpc itself)."""
        with self.calls.track(rpc, getattr(request, "request_id", ""), passthrough=(grpc.aio.AbortError,),
                              cancelled_as=lambda exc: status_name(context, exc)) as call:
            REQUEST_ID.set(call.request_id)
            if isinstance(request, Malformed):
                raise InvalidArgument("request", f"the request is not a valid {request.type_name}")
            call.check_id()
            yield call
        failure = call.failure
        if failure is not None:
            if failure.retry_after_ms is not None:
                # grpc-retry-pushback-ms is what grpc's own retry policy reads.
                ms = str(failure.retry_after_ms)
                context.set_trailing_metadata((("grpc-retry-pushback-ms", ms), ("retry-after-ms", ms)))
            await context.abort(getattr(grpc.StatusCode, failure.status), failure.message)

    def _caller(self, context) -> str:
        return self.callers.of_grpc(context) if self.callers else OTHER_CALLER

    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        arrived = time.perf_counter()
        response = pb.GenerateResponse()
        async with self._rpc("Generate", context, request) as call:
            req = _request(request, self.tiers, context.time_remaining(), context.invocation_metadata(), stream=False,
                           caller=self._caller(context))
            response.request_id = req.request_id
            parts: list[str] = []
            async for event in self.router.generate(req, arrived):
                if isinstance(event, DeltaEvent):
                    parts.append(event.text)
                elif isinstance(event, DecisionEvent):
                    call.decided(event.decision)
                    response.decision.CopyFrom(_decision(event.decision, self.tiers))
                elif isinstance(event, FinalEvent):
                    response.finish_reason = event.finish_reason
                    response.usage.CopyFrom(_usage(event.usage))
                    response.timings.CopyFrom(_timings(event.timings))
                    response.effective_sampling.CopyFrom(_effective(event.sampling))
                    response.cache.CopyFrom(_cache(event))
                    if event.retrieval is not None:
                        response.retrieval.CopyFrom(_retrieval(event))
            response.text = "".join(parts)
        return response

    async def GenerateStream(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateStreamResponse]:
        arrived = time.perf_counter()
        async with self._rpc("GenerateStream", context, request) as call:
            req = _request(request, self.tiers, context.time_remaining(), context.invocation_metadata(), caller=self._caller(context))
            rid = req.request_id
            async for event in self.router.generate(req, arrived):
                if isinstance(event, DeltaEvent):
                    yield pb.GenerateStreamResponse(request_id=rid, delta=event.text)
                elif isinstance(event, DecisionEvent):
                    call.decided(event.decision)
                    yield pb.GenerateStreamResponse(request_id=rid, decision=_decision(event.decision, self.tiers))
                elif isinstance(event, FinalEvent):
                    final = pb.StreamFinal(
                        finish_reason=event.finish_reason, usage=_usage(event.usage), timings=_timings(event.timings),
                        effective_sampling=_effective(event.sampling), cache=_cache(event), retrieval=_retrieval(event),
                    )
                    yield pb.GenerateStreamResponse(request_id=rid, final=final)

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        async with self._rpc("Classify", context, request) as call:
            threshold = request.threshold if request.HasField("threshold") else None
            decision, classify_ms = self.router.classify(_messages(request.messages), threshold)
            call.decided(decision)
            return pb.ClassifyResponse(decision=_decision(decision, self.tiers), classify_ms=classify_ms)

    async def Feedback(self, request: pb.FeedbackRequest, context) -> pb.FeedbackResponse:
        async with self._rpc("Feedback", context, request) as call:
            outcome = request.WhichOneof("outcome")
            rating = request.rating if outcome == "rating" else None
            correct = request.correct if outcome == "correct" else None
            check_feedback(request.request_id, rating, correct, request.label)
            if self.outcomes is None:
                raise FailedPrecondition("feedback: this server stores no feedback (set store.url)")
            answered = await self.outcomes.record(request.request_id, rating, correct, request.label)
            call.tier = answered.tier
            return pb.FeedbackResponse(request_id=request.request_id, tier_name=answered.tier,
                                       p_complex=0.0 if math.isnan(answered.p_complex) else answered.p_complex)

    async def RevertAdapter(self, request: pb.RevertAdapterRequest, context) -> pb.AdapterStats:
        async with self._rpc("RevertAdapter", context, request):
            if self.adaptation is None:
                raise FailedPrecondition("routing.adapt is off on this server: there is no adapter to revert")
            return pb.AdapterStats(**await self.adaptation.revert(request.to))

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        async with self._rpc("ListModels", context, request):
            tiers = []
            for tier in self.router.tiers:
                c, engine = tier.config, tier.engine
                tiers.append(
                    pb.TierInfo(
                        tier=tier_enum(tier.name, self.tiers), tier_name=tier.name, model=c.model, max_model_len=c.max_model_len,
                        default_max_tokens=c.sampling.max_tokens, max_tokens_cap=c.sampling.max_tokens_cap,
                        ready=tier.ready, load_seconds=engine.load_seconds,
                    )
                )
            policy = self.router.policy
            return pb.ListModelsResponse(tiers=tiers, threshold=policy.threshold, cut_points=policy.cut_points)

    async def GetStats(self, request: pb.GetStatsRequest, context) -> pb.GetStatsResponse:
        async with self._rpc("GetStats", context, request):
            stats, policy = self.router.stats, self.router.policy
            cuts, shares, targets = policy.live_cuts, policy.share.window_shares(), policy.share.targets
            tiers = [
                pb.TierStats(
                    tier=tier_enum(tier.name, self.tiers), tier_name=tier.name, model=tier.model,
                    **dataclasses.asdict(stats.tier_report(tier.name)), engine_load_seconds=tier.engine.load_seconds, ready=tier.ready,
                    cut_point=cuts[j - 1] if j else 0.0, target_share=targets[j - 1] if j and targets else -1.0, window_share=shares[j],
                )
                for j, tier in enumerate(self.router.tiers)
            ]
            response = pb.GetStatsResponse(
                uptime_seconds=stats.uptime(), total_requests=sum(stats.by_code.values()), completed_generations=stats.completed(),
                large_share=stats.above_cheapest_share(), tiers=tiers, requests_by_code=dict(stats.by_code),
                cache_lookups=stats.cache_lookups(), exact_hit_rate=stats.hit_rate("EXACT"), semantic_hit_rate=stats.hit_rate("SEMANTIC"),
                routing_window=policy.share.size, **_session_stats(policy.sessions),
                cost=self.router.costs.total, cost_if_most_capable=self.router.costs.if_most_capable, saved_share=self.router.costs.saved_share,
            )
            if self.adaptation is not None:
                response.adapter.CopyFrom(pb.AdapterStats(**self.adaptation.status()))
            response.callers.extend(pb.CallerStats(**row) for row in self.router.ledger.report())
            response.summary = format_stats(response)
            return response


def _session_stats(store) -> dict:
    if store is None:
        return {}
    return {"sessions": len(store), "session_pins": store.pins, "session_escalations": store.escalations, "session_expiries": store.expiries}


def format_stats(r: pb.GetStatsResponse) -> str:
    lines = [
        f"uptime {r.uptime_seconds:.0f} s · {r.total_requests} requests · {r.completed_generations} generations · "
        f"{r.large_share:.0%} above the cheapest tier",
        "status codes: " + (", ".join(f"{k} {v}" for k, v in sorted(r.requests_by_code.items())) or "none yet"),
        f"cache: {r.cache_lookups} lookups · exact hits {r.exact_hit_rate:.0%} · semantic hits {r.semantic_hit_rate:.0%}",
    ]
    width = max((len(t.tier_name) for t in r.tiers), default=5)
    for t in r.tiers:
        lines.append(
            f"{t.tier_name:<{width}} {t.model}: {t.requests} ({t.share:.0%}) · mean {t.mean_latency_ms:.0f} ms · p95 {t.p95_latency_ms:.0f} ms · "
            f"ttft {t.mean_ttft_ms:.0f} ms · {t.tokens_per_second:.1f} tokens/s · loaded in {t.engine_load_seconds:.1f} s · "
            f"{'ready' if t.ready else 'NOT READY'}"
        )
    lines.append(f"routing (last {r.routing_window} decisions): tier, cut point now, target share, realised share, spilled out/in, feedback")
    for i, t in enumerate(r.tiers):
        cut = f"{t.cut_point:.3f}" if i else "-"
        target = f"{t.target_share:.1%}" if t.target_share >= 0 else "none"
        lines.append(f"  {t.tier_name:<{width}} cut {cut:>5} · target {target:>5} · realised {t.window_share:.1%} · "
                     f"spilled {t.spilled_out}/{t.spilled_in} · feedback {t.feedback}")
    lines.append(f"cost: {r.cost:.4g} · {r.cost_if_most_capable:.4g} if every answer came from the most capable tier · "
                 f"saved {r.saved_share:.1%}")
    lines.append(f"sessions: {r.sessions} remembered · {r.session_pins} requests kept up · {r.session_escalations} moved up · "
                 f"{r.session_expiries} forgotten")
    for c in r.callers:
        if c.requests or c.rejected or len(r.callers) > 1:
            lines.append(f"caller {c.caller}: {c.requests} requests · {c.tokens} tokens · cost {c.cost:.4g} "
                         f"({c.spent_today:.4g} today) · {c.rejected} refused at a limit · {c.in_flight} in flight")
    if r.HasField("adapter"):
        a = r.adapter
        routing = (f"adapter {a.current} routes ({a.outcomes} outcomes, held-out APGR {a.held_out_apgr:.3f} against the prior's "
                   f"{a.prior_held_out_apgr:.3f})" if a.current else "the prior alone routes")
        lines.append(f"adapter: {routing} · fits adopted {a.fits_adopted}, refused {a.fits_refused}, failed {a.fits_failed} · "
                     f"{a.pending_outcomes} new outcomes{' · fitting now' if a.fitting else ''}"
                     + (f" · last refused: {a.last_fit}" if a.last_fit not in ("", "adopted") else ""))
    return "\n".join(lines)
