"""A stand-in for `vllm serve` that answers at once, for measuring what the
router itself adds on the remote path with no engine time to hide it:

    python -m benchmarks.instant_upstream PORT MODEL_DIR MODEL

Serves /health, /v1/models, /tokenize (the chat template rendered with the
model's own tokenizer, so the router's start-up comparison agrees), and
streamed /v1/completions and /v1/chat/completions that send max_tokens
one-word events without waiting. `python -m benchmarks.remote
--instant-upstream` runs it in place of `vllm serve`.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

from server.prompt import load_tokenizer, render_ids
from server.types import ChatMessage


async def event_stream(request: web.Request, events: list[dict]) -> web.StreamResponse:
    """The events as a server-sent event stream, each in its own write, then [DONE]."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def make_app(model_dir: str, model: str) -> web.Application:
    tokenizer = load_tokenizer(model_dir)

    async def health(request):
        return web.Response()

    async def models(request):
        return web.json_response({"data": [{"id": model, "max_model_len": 8192}]})

    async def tokenize(request):
        body = await request.json()
        messages = [ChatMessage(m["role"], m["content"]) for m in body["messages"]]
        return web.json_response({"tokens": render_ids(tokenizer, messages)})

    async def complete(request):
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = int(body.get("max_tokens") or 16)
        choice = {"delta": {"content": " word"}} if chat else {"text": " word"}
        return await event_stream(request, [{"choices": [{**choice, "index": 0, "finish_reason": "length" if i == n - 1 else None}],
                                             "usage": {"completion_tokens": i + 1}} for i in range(n)])

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


def main(argv=None) -> int:
    port, model_dir, model = (argv or sys.argv[1:])[:3]
    web.run_app(make_app(model_dir, model), host="127.0.0.1", port=int(port), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
