"""The HTTP endpoint's error mapping, auth and disconnects on a real aiohttp
server around held engines (only a fake makes "the small tier is full" and
"a request is generating" exact). Real answers from real engines:
tests/integration/test_http.py."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import classifier
from server.app import build_app
from server.config import load

from .test_admission import ROOT, HeldEngine, _wait_for

TOKEN = "s3cret-token"


@contextlib.contextmanager
def serving_http(folder):
    """(app, engines): the HTTP door, with a bearer token, around held
    engines; each tier holds one request and queues one."""
    text = (ROOT / "config/cpu.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/")
    text = text.replace("    max_in_flight: 16\n    max_queued: 32", "    max_in_flight: 1\n    max_queued: 1")
    path = folder / "cfg.yaml"
    path.write_text(text)
    config = load(path).with_ports(0, -1, http_port=0)
    engines = {n: HeldEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}

    async def start():
        app = build_app(config, classifier.load(), engines=engines, tokens=(TOKEN,))
        await app.server.start()
        await app.start_http()
        return app

    loop = asyncio.new_event_loop()
    app = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield app, engines
    finally:
        for e in engines.values():
            e.release.set()
        asyncio.run_coroutine_threadsafe(app.http.stop(), loop).result(10)
        asyncio.run_coroutine_threadsafe(app.server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def served(tmp_path):
    with serving_http(tmp_path) as served:
        yield served


def call(app, method: str, path: str, body: dict | bytes | None = None, token: str | None = TOKEN, timeout: float = 10):
    """(status, headers, the body as JSON or bytes); a bytes `body` is sent as it is."""
    conn = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    conn.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), json.loads(data) if data.startswith(b"{") else data


def test_without_the_bearer_token_it_is_401_in_openais_format(served):
    app, _ = served
    status, _, body = call(app, "GET", "/v1/models", token=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, body = call(app, "POST", "/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, token="wrong")
    assert status == 401
    status, headers, body = call(app, "POST", "/v1/chat/completions", {"model": "small", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "ok" and headers["x-triage-tier"] == "small"


def test_a_full_tier_is_429_with_retry_after_and_malformed_json_is_400(served):
    app, engines = served
    engines["small"].release.clear()
    hi = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(call, app, "POST", "/v1/chat/completions", hi, TOKEN, 30) for _ in range(2)]
        _wait_for(lambda: app.tiers["small"].gate.waiting == 1)
        status, headers, body = call(app, "POST", "/v1/chat/completions", hi)
        assert status == 429 and int(headers["Retry-After"]) >= 1 and body["error"]["type"] == "rate_limit_error"
        engines["small"].release.set()
        assert all(f.result()[0] == 200 for f in held)
    conn = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 400 and "not valid JSON" in json.loads(resp.read())["error"]["message"]


def test_a_client_that_disconnects_mid_stream_aborts_the_engine_request(served):
    app, engines = served
    engines["large"].release.clear()
    conn = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
    body = {"model": "large", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    _wait_for(lambda: engines["large"].running == 1)
    conn.sock.close()  # the client goes away while the engine is generating
    conn.close()
    _wait_for(lambda: engines["large"].running == 0, timeout=10)
    registry = app.router.metrics.registry
    # Counted as the caller going away (no decision had gone out: no tier label yet, as on gRPC).
    _wait_for(lambda: registry.get_sample_value("router_errors_total", {"code": "CANCELLED"}) == 1.0)
