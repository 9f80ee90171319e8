"""A tier served by `vllm serve` replicas over HTTP, behind the same `Engine`
protocol as the in-process engine, so routing, caching, metrics and fallback
do not change.

- Prompts are rendered here with the tier's tokenizer (`model_path`: a
  local copy of the served model's tokenizer files), by the same rule as in
  process (`prompt.render_ids`: lengths checked, special tokens typed in a
  message kept as text), then generated from those token ids with
  `/v1/completions`: one round trip. Without a local tokenizer a replica's
  `/tokenize` renders them (a second round trip, and special tokens in user
  text cannot be neutralised there; the log says so at start). At start the
  two renderings are compared once and a difference is logged.
- Every sampling value is sent explicitly. vLLM's OpenAI server fills unset
  values from the model's generation_config.json; the router's explicit
  greedy defaults and caps must win, as they do in process.
- Each generation goes to the healthy replica with the fewest outstanding
  requests. A replica that fails before the first token is retried once on
  another; never after, since the caller has already seen text.
- Closing the generator (caller cancelled, deadline, drain) closes the HTTP
  response, and vLLM aborts a request whose connection closed.
- Each replica is health-checked in the background (`/health`, then
  `/v1/models` for the tier's model and context length) and has its own
  circuit breaker.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Sequence

from .breaker import CircuitBreaker
from ..config import ResilienceConfig, TierConfig
from ..errors import InvalidArgument, Unavailable
from .prompt import load_tokenizer, render, render_ids
from ..types import ChatMessage, EffectiveSampling, EngineChunk, Prompt
from ..observe.tracing import upstream_headers
from .upstream import (UpstreamError, check_forever, close, error_text, get_status, http_client, line_batches, post_json, post_stream,
                       served_models, sse_chunks, streamed_sampling, transport_errors, wait_until_ready)

log = logging.getLogger("triage.remote")

class Replica:
    def __init__(self, url: str, breaker: CircuitBreaker):
        self.url = url
        self.breaker = breaker
        self.healthy = False
        self.in_flight = 0
        self.problem = "not checked yet"  # why it is not healthy, for the log


class RemoteEngine:
    """One tier served by `vllm serve` replicas."""

    # Its replicas are restarted by whatever runs them (Kubernetes, compose),
    # not by the router: the router only notices them leave and come back.
    restartable = False

    def __init__(self, tier: TierConfig, resilience: ResilienceConfig, metrics=None, connector=None, api_key: str | None = None):
        self.tier = tier.name
        self.model = tier.model
        self.max_model_len = tier.max_model_len
        self.load_seconds = 0.0
        self._config = tier
        self._interval = resilience.health_interval_s
        self.replicas = [Replica(url, CircuitBreaker(resilience.failure_threshold, resilience.cooldown_s)) for url in tier.replicas]
        if metrics is None:  # tests: a registry of its own
            from prometheus_client import CollectorRegistry

            from ..observe.metrics import RouterMetrics

            metrics = RouterMetrics(CollectorRegistry())
        self._metrics = metrics
        self._connector = connector  # tests pass one that reaches a stand-in server
        self._api_key = api_key  # the replicas' --api-key, read from tier.api_key_env by __main__
        self._client: Any = None
        self._tokenizer: Any = None  # None: the replicas' /tokenize renders
        self._checker: asyncio.Task | None = None
        self._started = False

    # -- state -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and any(r.healthy for r in self.replicas)

    def unfinished_requests(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start health checking; return once a replica is healthy (the
        router stays NOT_SERVING until then, as while a local engine loads)."""
        self._tokenizer = await asyncio.to_thread(load_tokenizer, self._config.model_path)
        self._client = http_client(self._config, self._api_key, self._connector)
        m = self._metrics
        for r in self.replicas:  # every series present from the start
            m.replica_healthy.labels(self.tier, r.url).set(0)
            m.replica_requests.labels(self.tier, r.url)
            m.replica_errors.labels(self.tier, r.url)
            m.replica_in_flight.labels(self.tier, r.url).set(0)
        self._started = True
        self._checker = check_forever(self._check_all, self._interval)
        log.info("tier %s: waiting for a healthy replica among %s", self.tier, [r.url for r in self.replicas])
        self.load_seconds = await wait_until_ready(self.tier, lambda: self.ready,
                                                   lambda: "; ".join(f"{r.url}: {r.problem}" for r in self.replicas))
        log.info("tier %s: replica(s) healthy after %.1f s", self.tier, self.load_seconds)
        if self._tokenizer is not None:
            await self._compare_renderings()

    async def _compare_renderings(self) -> None:
        """A local tokenizer that is not the served model's would check
        lengths against the wrong counts and feed the model foreign ids: say
        so once, loudly, at start."""
        probe = [ChatMessage("system", "You are helpful."), ChatMessage("user", "Is 17 prime?")]
        try:
            remote = await self._tokenize_remotely(probe)
        except Exception as exc:  # the comparison is advice; serving goes on
            log.warning("tier %s: could not compare the local tokenizer with the replicas' /tokenize: %s", self.tier, exc)
            return
        if render_ids(self._tokenizer, probe) != remote:
            log.error("tier %s: the tokenizer at %s renders a conversation differently from the replicas' /tokenize: "
                      "model_path must hold the served model's tokenizer and chat template", self.tier, self._config.model_path)

    async def shutdown(self) -> None:
        self._started = False
        await close(self._checker, self._client)
        self._checker = self._client = None

    # -- health ------------------------------------------------------------------

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        problem = None
        try:
            status = await get_status(self._client, f"{replica.url}/health")
            if status != 200:
                problem = f"/health answered {status}"
            elif not replica.healthy:  # coming (back) up: is it serving what this tier promises?
                cards = await served_models(self._client, replica.url)
                if self.model not in cards:
                    problem = f"serves {sorted(cards)}, not {self.model}"
                elif (cards[self.model].get("max_model_len") or self.max_model_len) < self.max_model_len:
                    problem = f"its max_model_len {cards[self.model]['max_model_len']} is below the tier's {self.max_model_len}"
        except Exception as exc:  # any failure to answer is "not healthy"; the reason goes to the log
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        was = replica.healthy
        replica.healthy, replica.problem = problem is None, problem or ""
        if replica.healthy and not was:
            replica.breaker.success()  # back: its old failures are history
            log.info("tier %s: replica %s is healthy", self.tier, replica.url)
        elif was and not replica.healthy:
            log.error("tier %s: replica %s is unhealthy: %s", self.tier, replica.url, problem)
        self._metrics.replica_healthy.labels(self.tier, replica.url).set(1 if replica.healthy else 0)

    # -- choosing a replica ------------------------------------------------------

    def _pick(self, exclude: Sequence[Replica] = ()) -> Replica:
        """The healthy replica with the fewest outstanding requests whose
        breaker lets a request through."""
        candidates = sorted((r for r in self.replicas if r.healthy and r not in exclude), key=lambda r: r.in_flight)
        for replica in candidates:
            if replica.breaker.allow():
                return replica
        raise UpstreamError(f"tier {self.tier}: no healthy replica can take a request")

    def _failed(self, replica: Replica, exc: BaseException) -> None:
        replica.breaker.failure()
        self._metrics.replica_errors.labels(self.tier, replica.url).inc()
        log.warning("tier %s: replica %s failed: %s", self.tier, replica.url, exc)

    def _may_retry(self, tried: list[Replica], produced: bool) -> bool:
        """Once, on another healthy replica, and never after the caller saw text."""
        return not produced and len(tried) < 2 and any(r.healthy and r not in tried for r in self.replicas)

    # -- the Engine protocol -----------------------------------------------------

    async def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._client is None:
            raise Unavailable(f"tier {self.tier} is not started")
        if self._tokenizer is not None:
            return Prompt(await render(self._tokenizer, messages), tuple(messages))
        return Prompt(await self._tokenize_remotely(messages), tuple(messages))

    async def _tokenize_remotely(self, messages: Sequence[ChatMessage]) -> list[int]:
        body = {"model": self.model, "messages": [{"role": m.role, "content": m.content} for m in messages], "add_generation_prompt": True}
        tried: list[Replica] = []
        while True:  # at most twice, like a generation
            replica = self._pick(tried)
            tried.append(replica)
            try:
                status, content = await post_json(self._client, f"{replica.url}/tokenize", body, self._config.generation_timeout_s)
                if status >= 500:
                    raise UpstreamError(f"/tokenize answered {status}")
                if status != 200:
                    raise InvalidArgument("messages", f"the {self.tier} tier's server refused them: {error_text(content)}")
                return list(json.loads(content)["tokens"])
            except (UpstreamError, ValueError, KeyError, *transport_errors()) as exc:
                self._failed(replica, exc)
                if not self._may_retry(tried, produced=False):
                    raise UpstreamError(f"tier {self.tier}: replica {replica.url}: {exc}") from exc

    async def generate(self, prompt: Prompt, sampling: EffectiveSampling, request_id: str) -> AsyncIterator[EngineChunk]:
        if self._client is None:
            raise Unavailable(f"tier {self.tier} is not started")
        body = completion_body(self.model, prompt.ids, sampling, self._config.stream_interval)
        tried: list[Replica] = []
        while True:
            replica = self._pick(tried)
            tried.append(replica)
            produced = False
            gauge = self._metrics.replica_in_flight.labels(self.tier, replica.url)
            replica.in_flight += 1
            gauge.inc()
            self._metrics.replica_requests.labels(self.tier, replica.url).inc()
            try:
                async with post_stream(self._client, f"{replica.url}/v1/completions", body,
                                       {"X-Request-Id": request_id, **upstream_headers()}) as resp:
                    if resp.status >= 500:
                        raise UpstreamError(f"HTTP {resp.status}: {error_text(await resp.read())}")
                    if resp.status != 200:
                        # The router validated the request; the server still says no.
                        raise InvalidArgument("messages", f"the {self.tier} tier's server refused the request: {error_text(await resp.read())}")
                    async for chunk in sse_chunks(line_batches(resp)):
                        produced = True
                        yield chunk
                replica.breaker.success()
                return
            except (UpstreamError, *transport_errors()) as exc:
                self._failed(replica, exc)
                if not self._may_retry(tried, produced):
                    raise UpstreamError(f"tier {self.tier}: replica {replica.url}: {exc}") from exc
                log.warning("request %s: retrying on another %s replica before the first token", request_id, self.tier)
            finally:
                replica.in_flight -= 1
                gauge.dec()


def completion_body(model: str, prompt_ids: list[int], s: EffectiveSampling, stream_interval: int = 1) -> dict:
    """Every value explicit: an unset one would be taken from the model's
    generation_config.json by vLLM's OpenAI server. `stream_interval` > 1:
    asked per request (vLLM's server raises its own setting to it; the
    first and last events still come at once)."""
    body = {"model": model, "prompt": prompt_ids, "add_special_tokens": False,  # the template already placed them
            **streamed_sampling(s, disabled_top_k=0)}
    if stream_interval > 1:
        body["stream_interval"] = stream_interval
    return body
