"""Callers on the real CPU engines (server/callers/): who asked, what each
may spend, and fair share of the small tier while one caller floods it.

One server, three callers named by their bearer tokens (security.token_env,
"name:token"): `batch` floods, `chat` asks now and then, `capped` has two
requests a minute. Tests run in file order.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

from clients import ResourceExhaustedError, TriageClient
from triage_proto import router_pb2 as pb

from .conftest import _test_config, start_server, stop_server

TOKENS = {"chat": "chat-token-0123456789abcdef", "batch": "batch-token-0123456789abcdef", "capped": "capped-token-0123456789abcdef"}
QUESTION = "What is the capital of France?"
FLOOD = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("callers")
    callers = [{"name": "chat", "weight": 1}, {"name": "batch", "weight": 1}, {"name": "capped", "requests_per_minute": 2}]
    config = _test_config(tmp, callers=callers, security={"token_env": "TRIAGE_TEST_CALLER_TOKENS"},
                          cache={"exact": False, "semantic": False})
    env = {"TRIAGE_TEST_CALLER_TOKENS": ",".join(f"{name}:{token}" for name, token in TOKENS.items())}
    live = start_server(config, tmp, env=env)
    clients = {name: TriageClient(live.address, timeout=300, metadata=(("authorization", f"Bearer {token}"),))
               for name, token in TOKENS.items()}
    yield live, clients
    for c in clients.values():
        c.close()
    assert stop_server(live) == 0


def _first_token_s(client: TriageClient, question: str, **kwargs) -> tuple[float, list]:
    started, first = time.perf_counter(), None
    events = []
    for event in client.generate_stream(question, route="small", **kwargs):
        if first is None and event.WhichOneof("event") == "delta":
            first = time.perf_counter() - started
        events.append(event)
    return first, events


def test_a_flooding_caller_does_not_keep_another_waiting_behind_its_flood(server):
    """`batch` opens 60 streams on the small tier (16 slots, 32 queued):
    `chat`'s questions, asked while the flood's queue is full, start at
    once on the slot no one caller may hold (their time to the engine is
    milliseconds while the flood's last admitted streams wait seconds). The first
    token times are printed; the ratio to an idle router is
    benchmarks.callers_flood's."""
    live, clients = server
    idle, _ = _first_token_s(clients["chat"], QUESTION, max_tokens=16)
    firsts: list[float] = []
    refused: list[str] = []
    flood_routing_ms: list[float] = []  # arrival to the engine: the wait for a slot is in it
    lock = threading.Lock()
    flood_started = time.perf_counter()

    def flood_one(i: int) -> None:
        first = True
        try:
            for event in clients["batch"].generate_stream(f"Write a poem about the sea, number {i}.", route="small", max_tokens=32):
                if first and event.WhichOneof("event") == "delta":
                    first = False
                    with lock:
                        firsts.append(time.perf_counter() - flood_started)
                if event.WhichOneof("event") == "final":
                    flood_routing_ms.append(event.final.timings.routing_ms)
        except ResourceExhaustedError as exc:
            with lock:
                refused.append(str(exc))

    threads = [threading.Thread(target=flood_one, args=(i,)) for i in range(FLOOD)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # the flood holds its slots and fills the queue
    busy = []
    for _ in range(3):
        with lock:
            before = len(firsts)
        ttft, events = _first_token_s(clients["chat"], QUESTION, max_tokens=16)
        with lock:
            after = len(firsts)
        busy.append(ttft)
        assert "Paris" in "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
        routing_ms = events[-1].final.timings.routing_ms
        print(f"chat's first token {ttft * 1e3:.0f} ms (idle {idle * 1e3:.0f} ms), {routing_ms:.1f} ms from arrival to the engine; "
              f"the flood's first tokens: {before} before, {after} after")
        assert routing_ms < 100, "chat waited for a slot behind the flood"
        time.sleep(1.5)
    for t in threads:
        t.join()
    assert max(flood_routing_ms) > 2000  # the flood did queue: it is the flood that waits
    assert refused and all("queued" in r or "expected wait" in r for r in refused), refused[:3]
    stats = {c.caller: c for c in clients["chat"].stats().callers}
    assert stats["chat"].requests == 4 and stats["chat"].rejected == 0
    assert stats["batch"].requests + stats["batch"].rejected >= FLOOD - len(refused)


def test_a_caller_over_its_requests_per_minute_is_told_which_limit_and_when_to_retry(server):
    live, clients = server
    for _ in range(2):
        assert clients["capped"].generate(QUESTION, max_tokens=4).text
    with pytest.raises(grpc.RpcError) as err:  # the raw stub: the trailers are part of the answer
        clients["capped"].stub.Generate(pb.GenerateRequest(messages=[pb.Message(role="user", content=QUESTION)]),
                                        metadata=(("authorization", f"Bearer {TOKENS['capped']}"),), timeout=30)
    e = err.value
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "caller capped: at its requests_per_minute of 2" in e.details()
    trailers = dict(e.trailing_metadata())
    assert 1000 <= int(trailers["grpc-retry-pushback-ms"]) <= 61_000
    # The same limit on the HTTP door: 429 with Retry-After, in seconds.
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{live.http_port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['capped']}"})
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(request, timeout=30)
    assert http_err.value.code == 429 and 1 <= int(http_err.value.headers["Retry-After"]) <= 61
    assert "requests_per_minute" in json.loads(http_err.value.read())["error"]["message"]
    # A caller under its limits is never refused meanwhile.
    assert clients["chat"].generate(QUESTION, max_tokens=4).text
    rejected = live.metric_value("router_caller_rejected_total", caller="capped", limit="requests_per_minute")
    assert rejected == 2


def test_spend_per_caller_is_the_sum_of_its_answers_costs(server):
    live, clients = server
    before = {c.caller: c for c in clients["chat"].stats().callers}
    costs = [clients["chat"].generate(q, max_tokens=12).usage.cost for q in ("Name a colour.", "Name a fruit.", QUESTION)]
    assert all(c > 0 for c in costs)
    after = {c.caller: c for c in clients["chat"].stats().callers}
    assert after["chat"].cost - before["chat"].cost == pytest.approx(sum(costs), rel=1e-9)
    assert after["chat"].requests - before["chat"].requests == 3
    assert after["batch"].cost == before["batch"].cost  # nobody else's spend moved
    assert live.metric_value("router_caller_cost_total", caller="chat") == pytest.approx(after["chat"].cost, rel=1e-9)
    summary = clients["chat"].stats().summary
    assert "caller chat: " in summary and "caller batch: " in summary
    line = next(json.loads(l[l.index("{"):]) for l in reversed(live.log().splitlines()) if '"caller": "chat"' in l)
    assert line["caller"] == "chat"
