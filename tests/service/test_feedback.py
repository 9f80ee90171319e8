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


def _config(tmp_path, feedback: str):
    text = (ROOT / "config/cpu.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/") + feedback
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return load(path).with_ports(0, -1)


def _serve(config):
    engines = {n: HeldEngine(n, t.model, t.max_model_len) for n, t in config.tiers.items()}
    return serve_in_thread(config, engines, timeout=30)


def test_feedback_is_stored_for_an_answer_the_router_gave(tmp_path):
    store = tmp_path / "feedback.sqlite"
    with _serve(_config(tmp_path, f"\nfeedback:\n  path: {store}\n")) as (client, app):
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
    rows = sqlite3.connect(store).execute("SELECT request_id, tier, rating, correct, label, question FROM feedback").fetchall()
    assert rows == [(answer.request_id, answer.decision.tier_name, None, 0, "", None)]  # no question text unless keep_text


def test_feedback_for_an_unknown_or_malformed_request_is_refused(tmp_path):
    with _serve(_config(tmp_path, f"\nfeedback:\n  path: {tmp_path / 'fb.sqlite'}\n")) as (client, _app):
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
    with _serve(_config(tmp_path, "")) as (client, _app):
        answer = client.generate("Hello there", cache="off")
        with pytest.raises(FailedPreconditionError, match="feedback.path"):
            client.feedback(answer.request_id, correct=True)
