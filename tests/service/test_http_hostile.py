"""The OpenAI-compatible door under hostile and real-world bodies, on a real
aiohttp server around held engines (what is checked is the door: statuses,
error objects and slots, not answers; real answers: tests/integration/test_http.py).

Every malformed body is a 4xx with OpenAI's error object naming the problem,
never a 5xx, a hang or a traceback; the message shapes real clients send
(text parts, the developer role, assistant turns replayed from a response)
are answered; half-sent and idle connections hold no slot.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from .test_http_errors import TOKEN, call, serving_http


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serving_http(tmp_path_factory.mktemp("hostile")) as served:
        yield served


HI = [{"role": "user", "content": "hi"}]
OK = {"model": "small", "messages": HI}


def post(app, body: dict | bytes) -> tuple[int, dict | bytes]:
    status, _, parsed = call(app, "POST", "/v1/chat/completions", body)
    return status, parsed


HOSTILE_BODIES = [  # (id, raw body, status, the error's param)
    ("empty", b"", 400, "body"),
    ("not json", b"hello", 400, "body"),
    ("truncated", b'{"model": "small", "messages": [', 400, "body"),
    ("deep arrays", b"[" * 200_000, 400, "body"),
    ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, "body"),
    ("invalid utf-8", b'{"model": "small", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "body"),
    ("a list", b"[1, 2]", 400, "body"),
    ("a string", b'"hi"', 400, "body"),
    ("8 MB", json.dumps({**OK, "messages": [{"role": "user", "content": "x" * (8 << 20)}]}).encode(), 413, "body"),
    ("lone surrogate", b'{"model": "small", "messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, "messages[0].content"),
    ("lone surrogate in a part", b'{"model": "small", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     400, "messages[0].content"),
    ("lone surrogate in stop", b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', 400,
     "sampling.stop[0]"),
]

HOSTILE_FIELDS = [  # (id, body, status, the error's param)
    ("no messages", {"model": "small"}, 400, "messages"),
    ("messages empty", {**OK, "messages": []}, 400, "messages"),
    ("messages an object", {**OK, "messages": {"role": "user"}}, 400, "messages"),
    ("content a number", {**OK, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("content null for a user", {**OK, "messages": [{"role": "user", "content": None}]}, 400, "messages[0].content"),
    ("content blank", {**OK, "messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content"),
    ("an image part", {**OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                                       {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     400, "messages[0].content[1].type"),
    ("an audio part", {**OK, "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 400,
     "messages[0].content[0].type"),
    ("a part without text", {**OK, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400, "messages[0].content[0].text"),
    ("a part not an object", {**OK, "messages": [{"role": "user", "content": ["hi"]}]}, 400, "messages[0].content[0]"),
    ("role tool", {**OK, "messages": [{"role": "tool", "content": "42"}, *HI]}, 400, "messages[0].role"),
    ("role a number", {**OK, "messages": [{"role": 1, "content": "hi"}]}, 400, "messages[0]"),
    ("only a system turn", {**OK, "messages": [{"role": "system", "content": "be brief"}]}, 400, "messages"),
    ("tool calls", {**OK, "messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}, *HI]}, 400,
     "messages[1].tool_calls"),
    ("a message too long", {**OK, "messages": [{"role": "user", "content": "x" * 40_000}]}, 400, "messages[0].content"),
    ("too many messages", {**OK, "messages": HI * 100}, 400, "messages"),
    ("temperature a string", {**OK, "temperature": "hot"}, 400, "temperature"),
    ("temperature out of range", {**OK, "temperature": 7}, 400, "sampling.temperature"),
    ("temperature infinite", {**OK, "temperature": 1e309}, 400, "sampling.temperature"),
    ("top_p zero", {**OK, "top_p": 0}, 400, "sampling.top_p"),
    ("max_tokens negative", {**OK, "max_tokens": -1}, 400, "sampling.max_tokens"),
    ("max_tokens huge", {**OK, "max_tokens": 10**40}, 400, "sampling.max_tokens"),
    ("max_tokens true", {**OK, "max_tokens": True}, 400, "max_tokens"),
    ("seed a fraction", {**OK, "seed": 1.5}, 400, "seed"),
    ("stop a number", {**OK, "stop": 5}, 400, "stop"),
    ("too many stops", {**OK, "stop": [str(i) for i in range(40)]}, 400, "sampling.stop"),
    ("n two", {**OK, "n": 2}, 400, "n"),
    ("stream a string", {**OK, "stream": "yes"}, 400, "stream"),
    ("model a number", {**OK, "model": 42}, 400, "model"),
    ("tools", {**OK, "tools": [{"type": "function"}]}, 400, "tools"),
    ("model unknown", {**OK, "model": "gpt-4"}, 404, None),
]


def _assert_named_client_error(status, body, expected_status, param):
    assert status == expected_status, body
    error = body["error"]
    assert error["message"] and error["type"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize("raw, expected, param", [c[1:] for c in HOSTILE_BODIES], ids=[c[0] for c in HOSTILE_BODIES])
def test_a_malformed_body_is_a_named_4xx(served, raw, expected, param):
    app, _ = served
    status, body = post(app, raw)
    _assert_named_client_error(status, body, expected, param)


@pytest.mark.parametrize("request_body, expected, param", [c[1:] for c in HOSTILE_FIELDS], ids=[c[0] for c in HOSTILE_FIELDS])
def test_a_wrong_field_is_a_named_4xx(served, request_body, expected, param):
    app, _ = served
    status, body = post(app, request_body)
    _assert_named_client_error(status, body, expected, param)


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_read(served):
    app, _ = served
    with socket.create_connection(("127.0.0.1", app.http_port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100000000\r\n\r\n{")
        head = s.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]


REAL_CLIENT_SHAPES = [  # what SDKs and agent frameworks send every day
    ("text parts", [{"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2 + 2?"}]}]),
    ("developer role", [{"role": "developer", "content": "Answer briefly."}, *HI]),
    ("assistant null content", [*HI, {"role": "assistant", "content": None}, *HI]),
    ("a replayed response message", [*HI, {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": [], "audio": None,
                                           "function_call": None, "tool_calls": None}, *HI]),
    ("a name", [{"role": "user", "content": "hi", "name": "ada"}]),
]


@pytest.mark.parametrize("messages", [c[1] for c in REAL_CLIENT_SHAPES], ids=[c[0] for c in REAL_CLIENT_SHAPES])
def test_real_client_message_shapes_are_answered(served, messages):
    app, _ = served
    status, body = post(app, {"model": "small", "messages": messages, "logprobs": None, "tools": None})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "ok"


def test_half_sent_and_idle_connections_hold_no_slot(served):
    """The small tier has one slot. Five requests that stop half-way through
    their body and 200 sockets that never send a byte are open while a real
    request comes: it is answered at once."""
    app, _ = served
    sockets = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", app.http_port), timeout=10)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 200\r\n\r\n{\"model\": \"sma")
            sockets.append(s)
        sockets += [socket.create_connection(("127.0.0.1", app.http_port), timeout=10) for _ in range(200)]
        started = time.monotonic()
        status, body = post(app, OK)
        assert status == 200 and body["choices"][0]["message"]["content"] == "ok"
        assert time.monotonic() - started < 5
    finally:
        for s in sockets:
            s.close()
