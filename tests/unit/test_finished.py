"""server/finished.py: every listener hears of a finished request, in
order; one that raises is logged and counted and the others still run."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from server.finished import Finished, Listeners
from server.observe.metrics import RouterMetrics
from server.types import ChatMessage, Decision, GenerateInput, Timings, Usage


def finished() -> Finished:
    req = GenerateInput(request_id="r1", messages=(ChatMessage("user", "hi"),))
    return Finished(req, Decision("small", "S", 0.2, 0.45, "classifier"), "hello", Usage(3, 1), Timings(), "MISS", True, None, 0.0, 0.1, 0.05)


def test_a_failing_listener_is_counted_and_the_others_still_hear(caplog):
    metrics = RouterMetrics(CollectorRegistry())
    heard = []

    def broken(f):
        raise RuntimeError("disk full")

    listeners = Listeners([("first", lambda f: heard.append(("first", f.req.request_id))), ("broken", broken),
                           ("last", lambda f: heard.append(("last", f.text)))], metrics.listener_errors)
    count = lambda name: metrics.registry.get_sample_value("router_listener_errors_total", {"listener": name})  # noqa: E731
    assert count("broken") == 0  # every listener's series exists from the start
    with caplog.at_level(logging.ERROR, logger="triage.finished"):
        listeners(finished())
    assert heard == [("first", "r1"), ("last", "hello")]
    assert count("broken") == 1 and count("last") == 0
    assert "listener broken failed on request r1" in caplog.text
