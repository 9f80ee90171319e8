"""The OpenAI chat-completions schema, both ways, as plain data: a request
body becomes the router's `GenerateInput` (every unsupported field that
would change the answer refused by name), a decision and usage become the
response's JSON and `x-triage-*` headers. Pure: no aiohttp, no router, so
it is tested on its own (tests/unit/test_http_parse.py); http_api.py serves it.
"""

from __future__ import annotations

import json
import math

from ..errors import InvalidArgument, NotFound
from ..observe.costs import Cost
from ..types import ROLE_ALIASES, ChatMessage, GenerateInput, SamplingRequest

# Fields taken from a request; any other is refused by name.
SUPPORTED = {"model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens", "max_completion_tokens",
             "stop", "seed", "n", "user"}
# Keys an assistant turn carries when a client replays it from a response
# (the SDK's message.model_dump()): accepted when empty (null, [], ""),
# refused by name otherwise (tool calls would change the answer).
REPLAYED_EMPTY = {"refusal", "tool_calls", "function_call", "audio", "annotations"}



def _number(body: dict, name: str, kind=float):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise InvalidArgument(name, f"expected {'an integer' if kind is int else 'a number'}, got {json.dumps(value)[:40]}")
    return kind(value)


def _messages(raw) -> tuple[ChatMessage, ...]:
    """OpenAI's messages as clients send them: content as a string or as
    text parts, the developer role, and assistant turns replayed from
    history (content null, empty refusal and tool fields)."""
    if not isinstance(raw, list):
        raise InvalidArgument("messages", "expected a list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidArgument(f"messages[{i}]", "expected an object with a string role and a content")
        extra = sorted(k for k in set(m) - {"role", "content", "name"} if not (k in REPLAYED_EMPTY and not m[k]))
        if extra:
            raise InvalidArgument(f"messages[{i}].{extra[0]}", "not supported")
        messages.append(ChatMessage(ROLE_ALIASES.get(m["role"], m["role"]), _content(i, m)))
    return tuple(messages)


def _content(i: int, m: dict) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if content is None and m["role"] == "assistant":
        return ""
    if isinstance(content, list):
        return _text_parts(i, content)
    raise InvalidArgument(f"messages[{i}].content", "expected a string or a list of text parts")


def _text_parts(i: int, parts: list) -> str:
    """Text parts joined by newlines, as vLLM's own server joins them; any
    other part (image, audio, file) is refused by name: the tiers are text
    models."""
    texts = []
    for j, part in enumerate(parts):
        field = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidArgument(field, "expected a content part: an object with a string type")
        if part["type"] != "text":
            raise InvalidArgument(f"{field}.type", f"{part['type'][:32]!r} parts are not supported: the tiers are text models")
        if not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{field}.text", "expected a string")
        texts.append(part["text"])
    return "\n".join(texts)


def parse(body, tiers, auto_model: str, request_id: str, session_id: str | None = None) -> tuple[GenerateInput, bool, bool]:
    """A chat completion request as the router's input; (input, stream,
    include_usage). The session is the `x-session-id` header's
    (`session_id`), else OpenAI's `user` field. Raises InvalidArgument /
    NotFound naming the field."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "expected a JSON object")
    unknown = sorted(k for k in set(body) - SUPPORTED if body[k] is not None)  # null: not set, as in OpenAI's API
    if unknown:
        raise InvalidArgument(unknown[0], "not supported by this server (it would change the answer, so it is refused rather than ignored)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model", f"expected a model name: {auto_model!r}, a tier ({', '.join(t.name for t in tiers)}) or a served model")
    route = None
    if model != auto_model:
        route = next((t.name for t in tiers if model in (t.name, t.model)), None)
        if route is None:
            raise NotFound(f"model: {model!r} is not served here; use {auto_model!r} or one of {[t.name for t in tiers]}")
    messages = _messages(body.get("messages"))
    n = _number(body, "n", int)
    if n not in (None, 1):
        raise InvalidArgument("n", "only n=1 is supported")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise InvalidArgument("max_completion_tokens", "set max_tokens or max_completion_tokens, not both")
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise InvalidArgument("stop", "expected a string or a list of strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidArgument("stream", "expected true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidArgument("stream_options", "only include_usage is supported")
    sampling = SamplingRequest(
        temperature=_number(body, "temperature"), top_p=_number(body, "top_p"),
        max_tokens=_number(body, "max_tokens", int) if body.get("max_tokens") is not None else _number(body, "max_completion_tokens", int),
        stop=stop, seed=_number(body, "seed", int),
    )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidArgument("user", "expected a string (the end user's or conversation's id)")
    req = GenerateInput(request_id, tuple(messages), sampling, route=route, session_id=session_id or user or "")
    return req, stream, bool(options.get("include_usage"))


def decision_headers(d, cache: str | None = None) -> dict[str, str]:
    headers = {"x-triage-tier": d.tier, "x-triage-model": d.model, "x-triage-threshold": f"{d.threshold:.6g}",
               "x-triage-reason": d.reason, "x-triage-p-complex": "" if math.isnan(d.p_complex) else f"{d.p_complex:.6g}"}
    if cache is not None:
        headers["x-triage-cache"] = cache
    return headers


def decision_json(d, cache: str | None) -> dict:
    return {"tier": d.tier, "model": d.model, "p_complex": None if math.isnan(d.p_complex) else d.p_complex,
            "threshold": d.threshold, "reason": d.reason, "degraded": d.degraded, "cache": cache}


def usage_json(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def cost_json(usage) -> dict:
    """The answer's savings against the most capable tier (server/observe/costs.py)."""
    return {"cost": usage.cost, "cost_if_most_capable": usage.cost_if_most_capable,
            "saved_share": Cost(usage.cost, usage.cost_if_most_capable).saved_share}

