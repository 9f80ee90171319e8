"""The OpenAI request translation (server/fronts/openai_schema.py `parse`): pure code.
The endpoint itself is tested with real clients in tests/integration/test_http.py."""

from __future__ import annotations

import pytest

from server.errors import InvalidArgument, NotFound
from server.fronts.openai_schema import parse


class T:
    def __init__(self, name, model):
        self.name, self.model = name, model


TIERS = [T("small", "S-1.5B"), T("large", "L-7B")]
HI = [{"role": "user", "content": "hi"}]


def test_auto_routes_by_classifier_a_tier_or_model_name_forces_it():
    req, stream, usage = parse({"model": "auto", "messages": HI}, TIERS, "auto", "rid")
    assert req.route is None and not stream and not usage and req.messages[0].content == "hi"
    assert parse({"model": "large", "messages": HI}, TIERS, "auto", "r")[0].route == "large"
    assert parse({"model": "S-1.5B", "messages": HI}, TIERS, "auto", "r")[0].route == "small"
    with pytest.raises(NotFound, match="gpt-4"):
        parse({"model": "gpt-4", "messages": HI}, TIERS, "auto", "r")


def test_sampling_values_map_onto_the_explicit_rules():
    req, stream, usage = parse({"model": "auto", "messages": HI, "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 12,
                                "stop": "\n", "seed": 7, "stream": True, "stream_options": {"include_usage": True}}, TIERS, "auto", "r")
    s = req.sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.2, 0.9, 12, ("\n",), 7) and stream and usage


@pytest.mark.parametrize("extra, field", [
    ({"logprobs": True}, "logprobs"), ({"tools": []}, "tools"), ({"n": 3}, "n"), ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": 1.5}, "max_tokens"), ({"stop": [1]}, "stop"), ({"max_tokens": 4, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"messages": "hi"}, "messages"), ({"messages": [{"role": "user"}]}, "messages[0].content"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"continuous_usage_stats": True}}, "stream_options"), ({"model": None}, "model"),
])
def test_anything_that_would_change_the_answer_and_is_not_supported_is_refused_by_name(extra, field):
    with pytest.raises(InvalidArgument) as err:
        parse({"model": "auto", "messages": HI, **extra}, TIERS, "auto", "r")
    assert err.value.field == field


def test_the_shapes_real_clients_send_become_plain_turns():
    """Text parts joined by newlines (as vLLM's server joins them), the
    developer role as a system turn, an assistant turn replayed with null
    content and empty tool fields, and a null field that is not supported."""
    body = {"model": "auto", "logprobs": None, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [], "annotations": []},
        {"role": "user", "content": "and?"}]}
    req = parse(body, TIERS, "auto", "r")[0]
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "first\nsecond"), ("assistant", ""),
                                                           ("user", "and?")]


@pytest.mark.parametrize("content, field", [
    ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[0].content[0].type"),
    ([{"type": "text", "text": 3}], "messages[0].content[0].text"),
    ([None], "messages[0].content[0]"),
    (None, "messages[0].content"),
])
def test_a_part_that_is_not_text_is_refused_by_name(content, field):
    with pytest.raises(InvalidArgument) as err:
        parse({"model": "auto", "messages": [{"role": "user", "content": content}]}, TIERS, "auto", "r")
    assert err.value.field == field


def test_the_session_is_the_header_else_openais_user_field():
    body = {"model": "auto", "messages": HI, "user": "conv-7"}
    assert parse(body, TIERS, "auto", "r")[0].session_id == "conv-7"
    assert parse(body, TIERS, "auto", "r", session_id="conv-9")[0].session_id == "conv-9"
    assert parse({"model": "auto", "messages": HI}, TIERS, "auto", "r")[0].session_id == ""
    with pytest.raises(InvalidArgument, match="user"):
        parse({**body, "user": 7}, TIERS, "auto", "r")


def test_a_session_id_must_be_printable_and_short():
    from server.config import LimitsConfig
    from server.validation import check_request

    req = parse({"model": "auto", "messages": HI}, TIERS, "auto", "r", session_id="x" * 201)[0]
    with pytest.raises(InvalidArgument, match="session_id"):
        check_request(req, LimitsConfig(), ("small", "large"))


def test_the_schema_module_needs_no_aiohttp():
    import subprocess
    import sys

    code = "import sys, server.fronts.openai_schema; print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'grpc', 'vllm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
