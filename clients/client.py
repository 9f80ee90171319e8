"""Python clients for router.v1.Router, sync and asyncio.

    from clients import TriageClient
    with TriageClient("127.0.0.1:50051") as c:
        r = c.generate("What is the capital of France?")
        print(r.text, r.decision.tier, r.timings.total_ms)

Every call has a deadline (the client's default `timeout`, or the call's
own); gRPC errors arrive as the typed exceptions in clients.errors.
`generate` and `generate_stream` also take a ready-made `GenerateRequest`
(sent as it is); `stub` is the generated stub, for what the helpers do not
cover (call objects, trailers).
"""

from __future__ import annotations

from typing import AsyncIterator, Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from triage_proto import router_pb2 as pb
from triage_proto import router_pb2_grpc

from .errors import from_rpc_error

# CPU generation of a few hundred tokens takes tens of seconds; a default
# shorter than that makes a healthy server look broken.
DEFAULT_TIMEOUT = 300.0
# From the proto's own enum: CACHE_MODE_EXACT_ONLY -> "exact_only".
_CACHE_MODES = {name.removeprefix("CACHE_MODE_").lower(): value for name, value in pb.CacheMode.items()}

Messages = str | Sequence[tuple[str, str]] | Sequence[pb.Message]


def build_request(
    messages: Messages,
    *,
    route: str | None = None,
    threshold: float | None = None,
    request_id: str = "",
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    repetition_penalty: float | None = None,
    cache: str = "default",
    retrieval: bool | None = None,
    retrieval_top_k: int | None = None,
    session_id: str = "",
) -> pb.GenerateRequest:
    """A GenerateRequest from a question string or (role, content) pairs.

    route: a tier's name ("small", "large", or any tier the server's profile
    names), or None for the classifier; an unknown name is NOT_FOUND.
    cache: "default" (exact and semantic), "exact_only" or "off".
    retrieval: True/False to ask for document retrieval or not; None for the tier's default.
    session_id: a conversation's id: it stays on the most capable tier it has reached (session affinity).
    """
    if route is not None and (not isinstance(route, str) or not route):
        raise ValueError(f"route must be a tier name or None, got {route!r}")
    if cache not in _CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(_CACHE_MODES)}, got {cache!r}")
    sampling = pb.SamplingParams(stop=list(stop))
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("max_tokens", max_tokens), ("seed", seed), ("repetition_penalty", repetition_penalty)):
        if value is not None:
            setattr(sampling, name, value)
    req = pb.GenerateRequest(request_id=request_id, messages=_messages(messages), sampling=sampling, route_name=route or "",
                             cache_mode=_CACHE_MODES[cache], session_id=session_id)
    if threshold is not None:
        req.threshold = threshold
    if retrieval is not None:
        req.retrieval.enabled = retrieval
    if retrieval_top_k is not None:
        req.retrieval.top_k = retrieval_top_k
    return req


def _request(messages: "Messages | pb.GenerateRequest", kwargs: dict) -> pb.GenerateRequest:
    if isinstance(messages, pb.GenerateRequest):
        if kwargs:
            raise TypeError(f"a GenerateRequest is sent as it is; got options too: {sorted(kwargs)}")
        return messages
    return build_request(messages, **kwargs)


def _messages(messages: Messages) -> list[pb.Message]:
    if isinstance(messages, str):
        return [pb.Message(role="user", content=messages)]
    return [m if isinstance(m, pb.Message) else pb.Message(role=m[0], content=m[1]) for m in messages]


class TriageClient:
    """Blocking client."""

    def __init__(self, target: str, timeout: float = DEFAULT_TIMEOUT, channel: grpc.Channel | None = None, metadata: Sequence[tuple[str, str]] = ()):
        self._channel = channel or grpc.insecure_channel(target)
        self.stub = router_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)  # sent with every call (e.g. authorization)

    def __enter__(self) -> "TriageClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def generate(self, messages: Messages | pb.GenerateRequest, *, timeout: float | None = None, **kwargs) -> pb.GenerateResponse:
        return self._call(self.stub.Generate, _request(messages, kwargs), timeout)

    def generate_stream(self, messages: Messages | pb.GenerateRequest, *, timeout: float | None = None, **kwargs) -> Iterator[pb.GenerateStreamResponse]:
        call = self.stub.GenerateStream(_request(messages, kwargs), timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()  # a consumer that stops early cancels the generation

    def classify(self, messages: Messages, *, threshold: float | None = None, timeout: float | None = None) -> pb.ClassifyResponse:
        req = pb.ClassifyRequest(messages=_messages(messages))
        if threshold is not None:
            req.threshold = threshold
        return self._call(self.stub.Classify, req, timeout)

    def list_models(self, *, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def feedback(self, request_id: str, *, rating: int | None = None, correct: bool | None = None, label: str = "",
                 timeout: float | None = None) -> pb.FeedbackResponse:
        """How the answer `request_id` turned out: a rating 1-5, or correct."""
        return self._call(self.stub.Feedback, feedback_request(request_id, rating, correct, label), timeout)

    def stats(self, *, timeout: float | None = None) -> pb.GetStatsResponse:
        return self._call(self.stub.GetStats, pb.GetStatsRequest(), timeout)

    def revert_adapter(self, to: str, *, timeout: float | None = None) -> pb.AdapterStats:
        """Route with the previous adapter ("previous") or the prior alone ("prior")."""
        return self._call(self.stub.RevertAdapter, pb.RevertAdapterRequest(to=to), timeout)

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """SERVING, NOT_SERVING, ... for the whole server or one service."""
        resp = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class AsyncTriageClient:
    """asyncio client; use inside a running event loop."""

    def __init__(self, target: str, timeout: float = DEFAULT_TIMEOUT, channel: grpc.aio.Channel | None = None, metadata: Sequence[tuple[str, str]] = ()):
        self._channel = channel or grpc.aio.insecure_channel(target)
        self.stub = router_pb2_grpc.RouterStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)  # sent with every call (e.g. authorization)

    async def __aenter__(self) -> "AsyncTriageClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request, timeout):
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def generate(self, messages: Messages | pb.GenerateRequest, *, timeout: float | None = None, **kwargs) -> pb.GenerateResponse:
        return await self._call(self.stub.Generate, _request(messages, kwargs), timeout)

    async def generate_stream(self, messages: Messages | pb.GenerateRequest, *, timeout: float | None = None, **kwargs) -> AsyncIterator[pb.GenerateStreamResponse]:
        call = self.stub.GenerateStream(_request(messages, kwargs), timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            async for event in call:
                yield event
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    async def classify(self, messages: Messages, *, threshold: float | None = None, timeout: float | None = None) -> pb.ClassifyResponse:
        req = pb.ClassifyRequest(messages=_messages(messages))
        if threshold is not None:
            req.threshold = threshold
        return await self._call(self.stub.Classify, req, timeout)

    async def list_models(self, *, timeout: float | None = None) -> pb.ListModelsResponse:
        return await self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    async def feedback(self, request_id: str, *, rating: int | None = None, correct: bool | None = None, label: str = "",
                       timeout: float | None = None) -> pb.FeedbackResponse:
        return await self._call(self.stub.Feedback, feedback_request(request_id, rating, correct, label), timeout)

    async def stats(self, *, timeout: float | None = None) -> pb.GetStatsResponse:
        return await self._call(self.stub.GetStats, pb.GetStatsRequest(), timeout)

    async def revert_adapter(self, to: str, *, timeout: float | None = None) -> pb.AdapterStats:
        return await self._call(self.stub.RevertAdapter, pb.RevertAdapterRequest(to=to), timeout)

    async def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        resp = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def feedback_request(request_id: str, rating: int | None, correct: bool | None, label: str) -> pb.FeedbackRequest:
    if (rating is None) == (correct is None):
        raise ValueError("give exactly one of rating and correct")
    req = pb.FeedbackRequest(request_id=request_id, label=label)
    if rating is not None:
        req.rating = rating
    else:
        req.correct = correct
    return req
