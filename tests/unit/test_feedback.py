"""The feedback store and the memory of recent answers (no network, no engine)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from server.routing.feedback import Answered, FeedbackTable, RecentAnswers

ROOT = Path(__file__).resolve().parents[2]
ANSWER = Answered("large", "M", 0.81, 0.45, "classifier", 1000.0)


def test_recent_answers_are_bounded_by_count_and_age():
    now = [1000.0]
    recent = RecentAnswers(max_entries=3, max_age_s=60, clock=lambda: now[0])
    for i in range(5):
        recent.remember(f"r{i}", ANSWER)
    assert len(recent) == 3 and recent.get("r0") is None and recent.get("r4") == ANSWER
    now[0] = 1061.0  # past the age limit
    assert recent.get("r4") is None


def test_outcomes_persist_and_the_last_one_wins(tmp_path):
    path = str(tmp_path / "fb.sqlite")
    store = FeedbackTable.open(path, max_rows=100)
    store.record("a", ANSWER, rating=2, correct=None, label="")
    store.record("a", ANSWER, rating=None, correct=True, label="fixed")
    store.record("b", ANSWER, rating=5, correct=None, label="")
    store.close()
    rows = sqlite3.connect(path).execute("SELECT request_id, tier, p_complex, rating, correct, label, question FROM feedback ORDER BY request_id").fetchall()
    assert rows == [("a", "large", 0.81, None, 1, "fixed", None), ("b", "large", 0.81, 5, None, "", None)]


def test_the_store_keeps_the_newest_max_rows(tmp_path):
    store = FeedbackTable.open(str(tmp_path / "fb.sqlite"), max_rows=5, trim_every=10)
    for i in range(30):
        store.record(f"r{i:02d}", ANSWER, rating=3, correct=None, label="")
    assert store.count() == 5
    kept = [r[0] for r in store.store.query("SELECT request_id FROM feedback ORDER BY request_id")]
    assert kept == ["r25", "r26", "r27", "r28", "r29"]


def test_every_acknowledged_outcome_survives_a_kill_9(tmp_path):
    """A writer acknowledges each outcome once `record` returns, as the RPC
    does; killed with SIGKILL mid-stream, it loses none of those."""
    path = tmp_path / "fb.sqlite"
    code = ("import sys; from server.routing.feedback import Answered, FeedbackTable\n"
            f"s = FeedbackTable.open({str(path)!r}, 10_000)\n"
            "a = Answered('small', 'M', 0.2, 0.45, 'classifier', 0.0)\n"
            "i = 0\n"
            "while True:\n"
            "    s.record(f'r{i}', a, 4, None, '')\n"
            "    print(i, flush=True)\n"
            "    i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) == 40:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    stored = {r[0] for r in sqlite3.connect(path).execute("SELECT request_id FROM feedback")}
    assert {f"r{i}" for i in acked} <= stored
