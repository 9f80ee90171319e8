"""A stand-in for `vllm serve` on a GPU, close enough to vLLM's OpenAI
server that a `remote` tier cannot tell the difference, paced by a stated
model of one H200 serving a 7-8B model:

    python -m benchmarks.simulated_vllm PORT MODEL_DIR MODEL [--pace h200|instant] [--timeline FILE]

Serves /health, /v1/models, /tokenize (the chat template rendered with the
model's own tokenizer, so the router's start-up comparison agrees), and
streamed or whole /v1/completions and /v1/chat/completions with usage on
every event (`stream_options.continuous_usage_stats`), one server-sent event
per token, as vLLM's server sends them (or, when a request asks for
`stream_interval` N as vLLM's server allows, the first token alone and then
N tokens to an event).

The pace (class Pace) is continuous batching in its simplest form:

- at most `max_num_seqs` requests run at once (vLLM's default on a GPU is
  256); the rest wait in arrival order, as in vLLM's scheduler;
- a running request's first token comes `prefill_s + prefill_per_token_s *
  prompt tokens` after it starts (a chat's prompt tokens are its messages
  rendered with the model's chat template, as vLLM counts them: a router
  that renders the same chat and sends ids waits the same prefill);
- then every running request gets one token per engine step, and a step
  takes `step_s + step_per_seq_s * running requests` (decoding is memory
  bound: the weights are read once per step whatever the batch, and each
  sequence adds its own KV-cache reads).

The H200 constants give 1 / 11.2 ms = 89 tokens/s to one stream, about
2,900 tokens/s in all at 32 streams, 6,200 at 128 and 7,600 at 256 (the
cap: 512 streams queue half their requests). That is the shape and the size
of published vLLM figures for Llama-3.1-8B and Qwen2.5-7B on one H100/H200
(vLLM's v0.6.0 performance blog: about 10-12 ms per output token at low
load; NVIDIA's and vLLM's serving benchmarks: several thousand output
tokens/s per GPU at a few hundred concurrent requests). They are round
numbers of that size, not a fit to any one benchmark: the point is a
upstream as fast as a GPU's, so that the router, not the engine, is what
a benchmark measures. `--pace instant` answers with no delay at all.

It runs on uvloop in its own process; `python -m benchmarks.gpu_pace`
checks that direct clients get the rates the model predicts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass

from aiohttp import web

from server.tiers.prompt import load_tokenizer, render_ids
from server.types import ChatMessage


@dataclass(frozen=True)
class Pace:
    max_num_seqs: int = 256
    prefill_s: float = 0.012
    prefill_per_token_s: float = 0.00004  # 25,000 prompt tokens/s
    step_s: float = 0.008
    step_per_seq_s: float = 0.0001

    def step_seconds(self, running: int) -> float:
        return self.step_s + self.step_per_seq_s * running

    def tokens_per_second(self, streams: int) -> float:
        """The model's aggregate output rate with `streams` requests in
        flight (no prefill): what direct clients should measure."""
        running = min(streams, self.max_num_seqs)
        return running / self.step_seconds(running) if running else 0.0


H200 = Pace()
INSTANT = Pace(max_num_seqs=1 << 30, prefill_s=0.0, prefill_per_token_s=0.0, step_s=0.0, step_per_seq_s=0.0)
PACES = {"h200": H200, "instant": INSTANT}


class Engine:
    """The batch: a slot per running request, and one step clock they all
    follow (every running request gets its token at the same moment, as
    from one forward pass)."""

    def __init__(self, pace: Pace):
        self.pace = pace
        self.slots = asyncio.Semaphore(pace.max_num_seqs)
        self.running = 0
        self._step: asyncio.Future | None = None

    async def next_step(self) -> None:
        if self.pace.step_s == 0:
            return
        if self._step is None or self._step.done():
            loop = asyncio.get_running_loop()
            self._step = loop.create_future()
            loop.call_later(self.pace.step_seconds(self.running), self._end_step, self._step)
        await asyncio.shield(self._step)

    @staticmethod
    def _end_step(step: asyncio.Future) -> None:
        if not step.done():
            step.set_result(None)

    async def tokens(self, prompt_tokens: int, n: int):
        """Yield once per generated token, at the model's pace."""
        async with self.slots:
            self.running += 1
            try:
                prefill = self.pace.prefill_s + self.pace.prefill_per_token_s * prompt_tokens
                if prefill:
                    await asyncio.sleep(prefill)
                for i in range(n):
                    if i:
                        await self.next_step()
                    yield i
            finally:
                self.running -= 1


def _event(chat: bool, model: str, i: int, n: int, prompt_tokens: int, created: int, rid: str, tokens: int = 1) -> bytes:
    """The event that carries tokens i - tokens + 1 .. i."""
    text = " word" * tokens
    choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
    choice["finish_reason"] = "length" if i == n - 1 else None
    event = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created, "model": model,
             "choices": [choice], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": i + 1, "total_tokens": prompt_tokens + i + 1}}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _prompt_tokens(tokenizer, body: dict, chat: bool) -> int:
    """What the prefill delay depends on: a completion's prompt ids, or a
    chat's messages rendered with the model's template, as vLLM renders
    them (so a chat sent directly and the same chat rendered by the router
    and sent as ids wait the same prefill)."""
    prompt = body.get("prompt")
    if not chat:
        return len(prompt) if isinstance(prompt, list) else len(tokenizer.encode(str(prompt or "")))
    return len(render_ids(tokenizer, _messages(body)))


def _messages(body: dict) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m.get("content") or "") for m in body.get("messages") or ()]


def make_app(model_dir: str, model: str, pace: Pace, timeline=None) -> web.Application:
    """`timeline`: a text file that gets a JSON line per streamed request
    (its X-Request-Id, and when it arrived and its first event went, in
    time.time()), for benchmarks.first_token."""
    tokenizer = load_tokenizer(model_dir)
    state: dict = {}

    async def on_startup(app):
        state["engine"] = Engine(pace)  # its futures belong to the serving loop

    async def health(request):
        return web.Response()

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "max_model_len": 8192}]})

    async def tokenize(request):
        body = await request.json()
        tokens = render_ids(tokenizer, _messages(body))
        return web.json_response({"count": len(tokens), "max_model_len": 8192, "tokens": tokens})

    async def complete(request):
        arrived = time.time()
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or 16)
        prompt_tokens = _prompt_tokens(tokenizer, body, chat)
        rid, created = f"sim-{id(request):x}", int(time.time())
        seen = {"request_id": request.headers.get("X-Request-Id", rid), "arrived": arrived, "prompt_tokens": prompt_tokens}
        engine = state["engine"]
        if not body.get("stream"):
            async for _ in engine.tokens(prompt_tokens, n):
                pass
            text = " word" * n
            choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            return web.json_response({"id": rid, "created": created, "model": model, "choices": [{**choice, "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # vLLM's stream_interval (per request, in its OpenAI server): the
        # first and last tokens at once, the others `interval` to an event.
        interval, held = max(1, int(body.get("stream_interval") or 1)), 0
        async for i in engine.tokens(prompt_tokens, n):
            held += 1
            if i == 0 or i == n - 1 or held >= interval:
                if i == 0 and timeline is not None:  # stamped as it goes: the write may wait for the socket
                    timeline.write(json.dumps({**seen, "first_event": time.time()}) + "\n")
                await resp.write(_event(chat, model, i, n, prompt_tokens, created, rid, held))
                held = 0
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=16 * 2**20)
    app.on_startup.append(on_startup)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulated_vllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("model_dir")
    parser.add_argument("model")
    parser.add_argument("--pace", choices=sorted(PACES), default="h200")
    parser.add_argument("--timeline", help="append a JSON line per streamed request: its X-Request-Id, arrival and first event times")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        uvloop = None
    timeline = open(args.timeline, "a", buffering=1) if args.timeline else None  # line-buffered: read while it runs
    app = make_app(args.model_dir, args.model, PACES[args.pace], timeline)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096,
                loop=uvloop.new_event_loop() if uvloop else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
