"""Streams at the client's pace (server/fronts/merging.py), with a stand-in
engine that emits a numbered word a token: a client that keeps up gets one
message per token on both front doors, as before; a gRPC client that reads
slowly (its receive window full, so the router's writes wait) gets the same
text in order, in fewer messages, and the same usage. (merging.py's own
rules, which both doors share: tests/unit/test_merging.py.)"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import grpc
import pytest

from clients import TriageClient
from server.config import load
from server.types import EngineChunk

from .conftest import serve_in_thread
from .test_status_codes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
WORDS = 500  # the small tier's max_tokens_cap in config/cpu.yaml is 512


class Counting(FakeEngine):
    """`WORDS` numbered tokens, `gap_s` apart (0: as fast as the loop goes)."""

    gap_s = 0.0

    async def generate(self, prompt, sampling, request_id):
        for i in range(WORDS):
            await asyncio.sleep(self.gap_s)
            yield EngineChunk(_word(i), i + 1, finished=i == WORDS - 1, finish_reason="length" if i == WORDS - 1 else None)


def _word(i: int) -> str:
    return f"w{i:03d}-{'x' * 40} "


EXPECTED = "".join(_word(i) for i in range(WORDS))


@pytest.fixture
def served():
    Counting.gap_s = 0.0
    config = load(ROOT / "config/cpu.yaml", ["cache={exact: false, semantic: false}", "server.http_port=0"]).with_ports(0, -1)
    engines = {n: Counting(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    with serve_in_thread(config, engines, timeout=60, http=True) as (client, app):
        yield client, app


def _deltas(events) -> list[str]:
    return [e.delta for e in events if e.WhichOneof("event") == "delta"]


def test_a_grpc_client_that_keeps_up_gets_one_message_per_token(served):
    client, _ = served
    Counting.gap_s = 0.002
    events = list(client.generate_stream("Count.", route="small", max_tokens=WORDS))
    deltas = _deltas(events)
    assert "".join(deltas) == EXPECTED and len(deltas) == WORDS
    assert events[-1].final.usage.completion_tokens == WORDS


def test_a_grpc_client_that_reads_slowly_gets_the_whole_text_in_order_in_fewer_messages(served):
    client, app = served
    Counting.gap_s = 0.0
    # A receive window of 1 KB and no window growth: the router's writes wait while the client sleeps.
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}", options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    slow = TriageClient(f"127.0.0.1:{app.port}", timeout=60, channel=channel)
    events = []
    for event in slow.generate_stream("Count.", route="small", max_tokens=WORDS):
        events.append(event)
        time.sleep(0.01)
    slow.close()
    deltas = _deltas(events)
    assert "".join(deltas) == EXPECTED  # nothing lost, nothing reordered
    assert len(deltas) < WORDS / 2, len(deltas)
    assert events[-1].final.usage.completion_tokens == WORDS and events[-1].final.finish_reason == "length"


def _sse(port: int) -> list[dict]:
    """The chat completion's server-sent events."""
    body = json.dumps({"model": "small", "messages": [{"role": "user", "content": "Count."}], "stream": True,
                       "max_tokens": WORDS}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:500]
    events = []
    for line in rest.decode().splitlines():
        if line.startswith("data: {"):
            events.append(json.loads(line[6:]))
    return events


def test_an_http_client_that_keeps_up_gets_one_event_per_token(served):
    _, app = served
    Counting.gap_s = 0.002
    texts = [e["choices"][0]["delta"].get("content", "") for e in _sse(app.http_port) if e.get("choices")]
    texts = [t for t in texts if t]
    assert "".join(texts) == EXPECTED and len(texts) == WORDS
