"""A tier served through a gateway that speaks OpenAI chat completions: SMG
(Shepherd Model Gateway) in front of a pool of vLLM workers, or a single
`vllm serve`. The gateway places each request on a worker, retries, and
checks its workers' health; Triage decides the tier and keeps the tier-level
breaker and fallback (tiers.py), as for any engine.

- The conversation is rendered here with the tier's own tokenizer
  (`model_path`, required): the ids count the prompt for the length check and
  the usage reported, exactly as for the other backends. The gateway is sent
  the messages (SMG's `/v1/completions` takes no token ids, and it has no
  `/tokenize`) and applies the same chat template itself.
- Every sampling value is explicit (a disabled top_k is -1, which SMG
  requires), so no `generation_config.json` default applies.
- Readiness is the gateway's `/readiness` (SMG's `/health` answers 200 with
  no worker behind it), then `/v1/models` must list the tier's model.
- A status the gateway gives because of its workers (5xx, 429, a model it
  cannot place) is an engine failure: UNAVAILABLE, and the router may fall
  back to another tier. Only 400 and 422, a request the gateway finds
  malformed after the router's own checks, are INVALID_ARGUMENT.
- Closing the generator closes the HTTP stream; the gateway aborts the
  worker's request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Sequence

from ..config import ResilienceConfig, TierConfig
from ..errors import EngineFailure, InvalidArgument, Unavailable
from .prompt import load_tokenizer, render
from ..observe.tracing import upstream_headers
from ..types import ChatMessage, EffectiveSampling, EngineChunk, Prompt
from .upstream import (UpstreamError, check_forever, close, error_text, get_status, http_client, line_batches, post_stream, served_models,
                       sse_chunks, streamed_sampling, transport_errors, wait_until_ready)

log = logging.getLogger("triage.gateway")

CLIENT_ERRORS = (400, 422)  # the gateway says the request itself is wrong


class GatewayEngine:
    """One tier behind one gateway URL (`gateway_url`)."""

    restartable = False  # the gateway and its workers are run by the deployment

    def __init__(self, tier: TierConfig, resilience: ResilienceConfig, connector=None, api_key: str | None = None):
        self.tier, self.model, self.max_model_len = tier.name, tier.model, tier.max_model_len
        self.url = tier.gateway_url
        self.load_seconds = 0.0
        self._config = tier
        self._interval = resilience.health_interval_s
        self._connector = connector  # tests pass one that reaches a stand-in server
        self._api_key = api_key
        self._client: Any = None
        self._tokenizer: Any = None
        self._checker: asyncio.Task | None = None
        self._healthy = False
        self.problem = "not checked yet"
        self._in_flight = 0

    @property
    def ready(self) -> bool:
        return self._client is not None and self._healthy

    def unfinished_requests(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        self._tokenizer = await asyncio.to_thread(load_tokenizer, self._config.model_path)
        if self._tokenizer is None:
            raise EngineFailure(f"tier {self.tier}: no tokenizer at model_path {self._config.model_path!r}; a gateway tier renders "
                                "and counts prompts with the served model's tokenizer files, which must be there")
        self._client = http_client(self._config, self._api_key, self._connector)
        self._checker = check_forever(self._check, self._interval)
        log.info("tier %s: waiting for the gateway at %s", self.tier, self.url)
        self.load_seconds = await wait_until_ready(self.tier, lambda: self._healthy, lambda: f"gateway {self.url}: {self.problem}")
        log.info("tier %s: gateway ready after %.1f s", self.tier, self.load_seconds)

    async def shutdown(self) -> None:
        await close(self._checker, self._client)
        self._checker = self._client = None
        self._healthy = False

    async def _check(self) -> None:
        problem = None
        try:
            status = await get_status(self._client, f"{self.url}/readiness")
            if status != 200:
                problem = f"/readiness answered {status} (no healthy worker?)"
            elif not self._healthy:  # coming (back) up: does it serve this tier's model?
                served = sorted(await served_models(self._client, self.url))
                if self.model not in served:
                    problem = f"serves {served}, not {self.model}"
        except Exception as exc:  # any failure to answer is "not ready"; the reason goes to the log
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        was = self._healthy
        self._healthy, self.problem = problem is None, problem or ""
        if self._healthy and not was:
            log.info("tier %s: gateway %s is ready", self.tier, self.url)
        elif was and not self._healthy:
            log.error("tier %s: gateway %s is not ready: %s", self.tier, self.url, problem)

    async def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._tokenizer is None:
            raise Unavailable(f"tier {self.tier} is not started")
        return Prompt(await render(self._tokenizer, messages), tuple(messages))

    async def generate(self, prompt: Prompt, sampling: EffectiveSampling, request_id: str) -> AsyncIterator[EngineChunk]:
        if self._client is None:
            raise Unavailable(f"tier {self.tier} is not started")
        body = chat_body(self.model, prompt.messages, sampling)
        self._in_flight += 1
        try:
            async with post_stream(self._client, f"{self.url}/v1/chat/completions", body,
                                   {"X-Request-Id": request_id, **upstream_headers()}) as resp:
                if resp.status in CLIENT_ERRORS:
                    raise InvalidArgument("messages", f"the {self.tier} tier's gateway refused the request: {error_text(await resp.read())}")
                if resp.status != 200:
                    raise UpstreamError(f"tier {self.tier}: gateway answered {resp.status}: {error_text(await resp.read())}")
                async for chunk in sse_chunks(line_batches(resp)):
                    yield chunk
        except transport_errors() as exc:
            raise UpstreamError(f"tier {self.tier}: gateway {self.url}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._in_flight -= 1


def chat_body(model: str, messages: Sequence[ChatMessage], s: EffectiveSampling) -> dict:
    """Every value explicit, in the form SMG and vLLM's server both take (a
    disabled top_k is -1: SMG refuses 0)."""
    return {"model": model, "messages": [{"role": m.role, "content": m.content} for m in messages],
            **streamed_sampling(s, disabled_top_k=-1)}
