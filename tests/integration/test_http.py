"""The OpenAI-compatible HTTP endpoint on the session's real server (both
real CPU engines), with real clients: the official `openai` package (sync,
async, streaming) and `curl -N`. The same question through gRPC and HTTP
gives the same greedy answer and the same decision."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request

import pytest

openai = pytest.importorskip("openai")

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def base_url(live):
    assert live.http_port, "the CPU profile serves HTTP (server.http_port)"
    return f"http://127.0.0.1:{live.http_port}/v1"


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_the_same_question_through_grpc_and_http_gives_the_same_answer_and_decision(live, client):
    grpc_answer = live.client.generate(QUESTION, cache="off", max_tokens=24)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": QUESTION}],
                                                         max_tokens=24, temperature=0)
    r = raw.parse()
    assert r.choices[0].message.content == grpc_answer.text and "Paris" in grpc_answer.text
    assert r.choices[0].finish_reason == grpc_answer.finish_reason
    assert r.usage.prompt_tokens == grpc_answer.usage.prompt_tokens and r.usage.completion_tokens == grpc_answer.usage.completion_tokens
    d = grpc_answer.decision
    assert raw.headers["x-triage-tier"] == d.tier_name and raw.headers["x-triage-reason"] == d.reason
    assert float(raw.headers["x-triage-p-complex"]) == pytest.approx(d.p_complex, abs=1e-5)
    assert float(raw.headers["x-triage-threshold"]) == pytest.approx(d.threshold, abs=1e-5)
    assert raw.headers["x-triage-cache"] in ("MISS", "EXACT")
    triage = r.model_extra["triage"]
    assert (triage["tier"], triage["reason"]) == (d.tier_name, d.reason) and r.model == d.model


def test_streaming_with_usage_concatenates_to_the_unary_answer(client):
    messages = [{"role": "user", "content": "Name three primary colours."}]
    unary = client.chat.completions.create(model="small", messages=messages, max_tokens=32, temperature=0)
    chunks = list(client.chat.completions.create(model="small", messages=messages, max_tokens=32, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content and len(text) > 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == unary.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens  # the last chunk carries usage


def test_the_async_client_and_model_names_force_a_tier(base_url):
    async def go():
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as c:
            by_tier = await c.chat.completions.with_raw_response.create(model="large", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            models = await c.models.list()
            return by_tier.headers, [m.id for m in models.data]

    headers, models = asyncio.run(go())
    assert (headers["x-triage-tier"], headers["x-triage-reason"]) == ("large", "override")
    assert models[:3] == ["auto", "small", "large"]


@pytest.mark.parametrize("extra, status, names", [
    ({"model": "gpt-4o"}, 404, "gpt-4o"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"temperature": 5}, 400, "temperature"),
    ({"n": 2}, 400, "n"),
    ({"max_tokens": 100000}, 400, "max_tokens"),
])
def test_bad_requests_get_an_openai_error_naming_the_problem(client, extra, status, names):
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(**body)
    assert err.value.status_code == status
    assert names in err.value.message and "Traceback" not in err.value.message


def test_curl_streams_server_sent_events_ending_with_done(base_url):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True})
    out = subprocess.run([curl, "-sN", "-H", "Content-Type: application/json", "-d", body, f"{base_url}/chat/completions"],
                         capture_output=True, text=True, timeout=120).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_http_requests_are_counted_with_the_grpc_ones(live, client):
    before = live.metric_value("router_requests_total", rpc="http.chat_completions", tier="small", reason="override", code="OK") or 0.0
    client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert live.metric_value("router_requests_total", rpc="http.chat_completions", tier="small", reason="override", code="OK") == before + 1
    with urllib.request.urlopen(f"http://127.0.0.1:{live.http_port}/v1/models", timeout=5) as r:
        assert r.status == 200
