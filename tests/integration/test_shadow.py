"""Shadow evaluation on the real CPU engines (config/cpu.yaml, both tiers
SmolLM2-135M): a shadowed request's answer and caches are the caller's
alone; and greedy answers, which agree (the tiers serve the same model
here), let `calibrate --feedback` raise the cut, which callers' feedback
alone never could: it has outcomes only for the tier that answered.
Answers that differ: test_shadow_disagreeing.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, _test_config, start_server, stop_server

EASY = ["What is the capital of France?", "Name a primary colour.", "Who wrote Hamlet?", "How many legs does a spider have?"]
HARD = ["A tank fills through pipe A in 6 hours and through pipe B in 4 hours. How long does it take with both open?",
        "Write a Python function that merges overlapping intervals and explain its time complexity.",
        "Tom is twice as old as his sister. In 6 years the sum of their ages will be 42. How old is Tom now?"]


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow")
    store = tmp / "feedback.sqlite"
    config = _test_config(tmp, store={"url": f"sqlite:///{store}"}, routing={"shadow": {"enabled": True, "sample": 1.0}})
    server = start_server(config, tmp)
    server.store = store
    yield server
    assert stop_server(server) == 0


def _settled(server, timeout: float = 60) -> None:
    """Until every shadow sent has ended (compared, preempted or failed)."""
    def count(*results):
        return sum(server.metric_value("router_shadow_requests_total", direction=d, result=r) or 0 for d in ("up", "down") for r in results)

    deadline = time.monotonic() + timeout
    while count("sent") != count("agreed", "disagreed", "preempted", "failed"):
        assert time.monotonic() < deadline, "a shadow never ended"
        time.sleep(0.1)


def _rows(server, label: str) -> list[tuple]:
    return sqlite3.connect(server.store).execute("SELECT tier, p_complex, correct FROM feedback WHERE label = ?", (label,)).fetchall()


def test_a_shadowed_answer_and_its_cache_entry_are_the_callers(shadowed):
    client = shadowed.client
    first = client.generate("Name three rivers in Europe.", route="small", max_tokens=16)
    _settled(shadowed)
    assert _rows(shadowed, "shadow-up"), "the answer was not shadowed"
    again = client.generate("Name three rivers in Europe.", route="small", max_tokens=16)
    assert again.cache.status == 2 and again.text == first.text  # CACHE_EXACT: the live answer, not the shadow's
    fresh = client.generate("Name three rivers in Europe.", route="small", max_tokens=16, cache="off")
    assert fresh.text == first.text  # greedy: what the caller would have had without shadowing


def test_agreeing_shadows_let_calibrate_feedback_raise_the_cut(shadowed):
    """Greedy answers, one at a time (each shadow ends before the next
    request), over easy and hard questions: the hard ones, answered by
    large, shadowed down to small, agree."""
    for n in range(150):
        q = (HARD if n % 2 else EASY)[n % (len(HARD) if n % 2 else len(EASY))]
        shadowed.client.generate(f"{q} (case {n})", max_tokens=4, cache="off")
        _settled(shadowed)
    down = _rows(shadowed, "shadow-down")
    assert len(down) >= 40 and all(tier == "small" for tier, _, _ in down)
    out = subprocess.run([sys.executable, "-m", "classifier", "calibrate", "--feedback", str(shadowed.store), "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["accepted"], out.stderr
    assert report["new_cut"] > report["current_cut"] + 0.1, report
