"""The Feedback RPC on a real grpc.aio server (stand-in engines: what is
tested is the RPC's contract, not generation)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clients import FailedPreconditionError, InvalidArgumentError, NotFoundError
from server.config import load

from .conftest import serve_in_thread
from .test_admission import HeldEngine

ROOT = Path(__file__).resolve().parents[2]


def _config_file(tmp_path, store: Path | None) -> Path:
    """config/cpu.yaml with its feedback store at `store` (None: as shipped, off)."""
    text = (ROOT / "config/cpu.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/")
    if store is not None:
        text = text.replace("  url: null                     # sqlite", f"  url: sqlite:///{store}  # sqlite")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def _config(tmp_path, store: Path | None):
    config = load(_config_file(tmp_path, store)).with_ports(0, -1)
    assert config.store.url == (None if store is None else f"sqlite:///{store}")
    return config


def _serve(config):
    engines = {n: HeldEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    return serve_in_thread(config, engines, timeout=30)


def test_feedback_is_stored_for_an_answer_the_router_gave(tmp_path):
    store = tmp_path / "feedback.sqlite"
    with _serve(_config(tmp_path, store)) as (client, app):
        answer = client.generate("What is the capital of France?", cache="off")
        r = client.feedback(answer.request_id, rating=4, label="fine")
        assert (r.request_id, r.tier_name) == (answer.request_id, answer.decision.tier_name)
        assert r.p_complex == pytest.approx(answer.decision.p_complex)
        from clients.cli import main as cli

        assert cli(["--address", f"127.0.0.1:{app.port}", "feedback", answer.request_id, "--correct"]) == 0
        assert cli(["--address", f"127.0.0.1:{app.port}", "feedback", "feedbeefcafe1234", "--rating", "2"]) == 1  # NOT_FOUND
        client.feedback(answer.request_id, correct=False)  # the last outcome wins
        registry = app.router.metrics.registry
        assert registry.get_sample_value("router_feedback_total", {"tier": answer.decision.tier_name, "result": "rating_4"}) == 1.0
        assert registry.get_sample_value("router_feedback_total", {"tier": answer.decision.tier_name, "result": "incorrect"}) == 1.0
        assert registry.get_sample_value("router_feedback_answers_remembered") == 1.0  # the one answer given
        stats = client.stats()
        assert {t.tier_name: t.feedback for t in stats.tiers}[answer.decision.tier_name] == 3  # every accepted outcome, none refused
        assert "feedback 3" in stats.summary
    rows = sqlite3.connect(store).execute("SELECT request_id, tier, rating, correct, label, question FROM feedback").fetchall()
    assert rows == [(answer.request_id, answer.decision.tier_name, None, 0, "", None)]  # no question text unless keep_text


def test_feedback_for_an_unknown_or_malformed_request_is_refused(tmp_path):
    with _serve(_config(tmp_path, tmp_path / "fb.sqlite")) as (client, _app):
        with pytest.raises(NotFoundError, match="request_id"):
            client.feedback("0123456789abcdef", rating=3)
        answer = client.generate("Hello there", cache="off")
        for kwargs, field in (({"rating": 7}, "rating"), ({"rating": 0}, "rating"), ({"rating": 3, "label": "x" * 201}, "label")):
            with pytest.raises(InvalidArgumentError, match=field):
                client.feedback(answer.request_id, **kwargs)
        from triage_proto import router_pb2 as pb

        with pytest.raises(InvalidArgumentError, match="outcome"):
            client._call(client.stub.Feedback, pb.FeedbackRequest(request_id=answer.request_id), 10)


def test_without_a_store_feedback_is_failed_precondition(tmp_path):
    with _serve(_config(tmp_path, None)) as (client, _app):
        answer = client.generate("Hello there", cache="off")
        with pytest.raises(FailedPreconditionError, match="set store.url"):
            client.feedback(answer.request_id, correct=True)


SERVER = """
import asyncio, sys
import classifier
from server.app import build_app
from server.config import load
from tests.service.test_admission import HeldEngine

config = load(sys.argv[1]).with_ports(0, -1)
engines = {n: HeldEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}

async def main():
    app = build_app(config, classifier.load(), engines=engines)
    await app.server.start()
    print(app.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_acknowledged_feedback_survives_a_kill_9_of_the_server(tmp_path):
    """The server process is killed with SIGKILL right after its last
    Feedback answer: every outcome it acknowledged is in the store."""
    import signal
    import subprocess
    import sys

    from clients import TriageClient

    store = tmp_path / "feedback.sqlite"
    config = _config_file(tmp_path, store)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(config)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        acknowledged = []
        with TriageClient(f"127.0.0.1:{port}", timeout=30) as client:
            for i in range(25):
                answer = client.generate(f"Question number {i}?", cache="off")
                client.feedback(answer.request_id, rating=1 + i % 5)
                acknowledged.append((answer.request_id, 1 + i % 5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    stored = set(sqlite3.connect(store).execute("SELECT request_id, rating FROM feedback").fetchall())
    assert set(acknowledged) <= stored and len(stored) == 25
