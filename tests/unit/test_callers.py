"""Callers (server/callers/): the profile's section, the token mapping, the
ledger's limits on a clock of the test's own, fair share in admission, and
the counts a fleet shares through a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.callers.identity import CallerBook
from server.callers.ledger import Ledger, Window
from server.config import CallerConfig, ConfigError, load
from server.errors import ResourceExhausted
from server.fronts.auth import load_tokens
from server.tiers.admission import Gate

ROOT = Path(__file__).resolve().parents[2]
TOKEN_A, TOKEN_B = "a" * 24, "b" * 24


def _load(callers: str):
    return load(ROOT / "config/cpu.yaml", [f"callers={callers}"])


# -- the profile --------------------------------------------------------------------


def test_callers_load_with_their_limits():
    config = _load("[{name: chat, weight: 3, requests_per_minute: 600, concurrent: 8}, {name: batch, budget_per_day: 2.5}]")
    chat, batch = config.callers
    assert (chat.name, chat.weight, chat.requests_per_minute, chat.concurrent, chat.tokens_per_minute) == ("chat", 3, 600, 8, None)
    assert (batch.name, batch.budget_per_day, batch.weight) == ("batch", 2.5, 1.0)
    assert load(ROOT / "config/cpu.yaml").callers == ()  # none: today's behaviour


@pytest.mark.parametrize("callers, named", [
    ("[{name: a}, {name: a}]", "callers[1] (a).name: the caller 'a' is given twice"),
    ("[{name: a, requests_per_minute: -5}]", "callers[0] (a).requests_per_minute must be a number > 0, got -5"),
    ("[{name: a, concurrent: 1.5}]", "callers[0] (a).concurrent must be an integer > 0"),
    ("[{name: a, budget_per_day: 0}]", "callers[0] (a).budget_per_day must be a number > 0"),
    ("[{name: a, weight: 0}]", "callers[0] (a).weight must be a number > 0"),
    ("[{name: Batch Jobs}]", "callers[0] (Batch Jobs).name: lowercase letters"),
    ("[{name: other}]", "callers[0] (other).name: 'other' is reserved"),
    ("[{name: a, rpm: 3}]", "callers[0] (a): unknown key(s) ['rpm']"),
    ("{a: {}}", "callers: expected a list of callers"),
    ("[{name: a, tls_subject: CN=x}, {name: b, tls_subject: CN=x}]", "callers: tls_subject 'CN=x' names two callers"),
])
def test_bad_callers_are_refused_naming_the_field(callers, named):
    with pytest.raises(ConfigError) as err:
        _load(callers)
    assert named in str(err.value)


def test_tokens_map_to_configured_callers_and_an_unknown_name_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text(f"# comment\nchat:{TOKEN_A}\n{TOKEN_B}\n")
    assert load_tokens(str(path), None, ["chat"]) == {TOKEN_A: "chat", TOKEN_B: ""}
    path.write_text(f"chat:{TOKEN_A}\nbtach:{TOKEN_B}\n")
    with pytest.raises(ValueError, match=r"security.token_file line 2: the token names caller 'btach', which is not in callers \(chat\)"):
        load_tokens(str(path), None, ["chat"])
    monkeypatch.setenv("CALLER_TOKENS", f"chat:{TOKEN_A},batch:{TOKEN_A}")
    with pytest.raises(ValueError, match=r"entry 2: the same token names two callers \('chat' and 'batch'\)"):
        load_tokens(None, "CALLER_TOKENS", ["chat", "batch"])


def test_a_credential_names_its_caller_and_anything_else_is_other():
    book = CallerBook({TOKEN_A: "chat", TOKEN_B: ""}, (CallerConfig("chat"), CallerConfig("batch", tls_subject="CN=batch-runner")))
    assert book.of_token(TOKEN_A) == "chat" and book.of_token(TOKEN_A.encode()) == "chat"
    assert book.of_token(TOKEN_B) == "other" and book.of_token("x" * 24) == "other" and book.of_token(None) == "other"
    assert book.of_subject("CN=batch-runner") == "batch" and book.of_subject("CN=zzz", "batch-runner") == "batch"
    assert book.of_subject("CN=zzz", "zzz") is None


# -- the ledger ---------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):  # a multiple of 60: a minute's window starts here
        self.now = now

    def __call__(self) -> float:
        return self.now


def _refused(ledger: Ledger, caller: str) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as err:
        with ledger.hold(caller):
            pass
    return err.value


def test_requests_per_minute_refuses_the_next_one_naming_the_limit_and_when_to_retry():
    clock = Clock()
    ledger = Ledger([CallerConfig("chat", requests_per_minute=3), CallerConfig("free")], clock=clock)
    for _ in range(3):
        with ledger.hold("chat"):
            pass
    err = _refused(ledger, "chat")
    assert err.status == "RESOURCE_EXHAUSTED" and err.scope == "caller"
    assert "caller chat: at its requests_per_minute of 3" in err.message
    assert err.retry_after_ms == 61_000  # all three in this window: room just after it has slid past them (whole seconds)
    for _ in range(50):  # a caller with no limit is never refused
        with ledger.hold("free"):
            pass
    clock.now += 60 + 30  # half of the last window still counts: 1.5 of 3
    with ledger.hold("chat"):
        pass
    assert ledger.account("chat").rejected == 1 and ledger.account("chat").total_requests == 4


def test_tokens_per_minute_and_the_daily_budget_count_what_finished_answers_spent():
    clock = Clock()
    ledger = Ledger([CallerConfig("batch", tokens_per_minute=1000, budget_per_day=0.5)], clock=clock)
    with ledger.hold("batch"):
        ledger.charge("batch", 999, 0.1)
    with ledger.hold("batch"):  # under both: checked against what is spent, the next answer's size unknown
        ledger.charge("batch", 10, 0.1)
    err = _refused(ledger, "batch")
    assert "tokens_per_minute of 1000 (1009 now)" in err.message
    clock.now += 120  # the minute has passed, the day has not
    ledger.charge("batch", 0, 0.35)
    err = _refused(ledger, "batch")
    assert "budget_per_day of 0.5 (0.55 now)" in err.message
    day_end = (int(clock.now // 86_400) + 1) * 86_400
    assert err.retry_after_ms == pytest.approx((day_end - clock.now) * 1000, abs=1000)
    report = {r["caller"]: r for r in ledger.report()}
    assert report["batch"]["cost"] == pytest.approx(0.55) and report["batch"]["tokens"] == 1009 and report["batch"]["rejected"] == 2


def test_concurrent_requests_are_limited_while_they_run():
    ledger = Ledger([CallerConfig("chat", concurrent=2)], clock=Clock())
    with ledger.hold("chat"), ledger.hold("chat"):
        assert "concurrent of 2" in _refused(ledger, "chat").message
    with ledger.hold("chat"):
        pass


def test_the_sliding_window_weighs_the_previous_minute_by_its_overlap():
    w = Window(60)
    w.add(60, 120.0)  # window [120, 180)
    assert w.count(150.0) == 60
    assert w.count(180.0) == 60 and w.count(210.0) == pytest.approx(30) and w.count(240.0) == 0
    assert w.seconds_until_below(30, 180.0) == pytest.approx(30, abs=0.01)


# -- fair share ---------------------------------------------------------------------


async def _hold(gate: Gate, caller: str, order: list, release: asyncio.Event):
    async with gate.slot(caller):
        order.append(caller)
        await release.wait()


def test_a_flood_fills_all_but_the_headroom_and_another_caller_starts_at_once():
    async def run():
        gate = Gate("tier small", 4, 100, weights={"flood": 1, "chat": 1}, headroom=1)
        order, release = [], asyncio.Event()
        flood = [asyncio.create_task(_hold(gate, "flood", order, release)) for _ in range(20)]
        await asyncio.sleep(0)
        assert (gate.in_flight, gate.waiting) == (3, 17)
        chat = asyncio.create_task(_hold(gate, "chat", order, release))
        await asyncio.sleep(0)
        assert order == ["flood"] * 3 + ["chat"] and gate.in_flight == 4
        release.set()
        await asyncio.gather(*flood, chat)
        assert order.count("flood") == 20 and (gate.in_flight, gate.waiting) == (0, 0)

    asyncio.run(run())


def test_contended_slots_go_round_robin_by_weight_not_first_come():
    async def run():
        gate = Gate("tier small", 1, 100, weights={"flood": 1, "chat": 3})
        order, releases = [], []

        async def one(caller):
            release = asyncio.Event()
            releases.append(release)
            await _hold(gate, caller, order, release)

        tasks = [asyncio.create_task(one("flood")) for _ in range(12)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(one("chat")) for _ in range(6)]  # all queued behind 11 of the flood
        await asyncio.sleep(0)
        while len(order) < 18:
            for r in releases:
                r.set()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        # First come would serve the flood's twelve first; by weight, chat's six go three to one against it.
        assert order[0] == "flood" and order[:9].count("chat") == 6, order

    asyncio.run(run())


def test_one_caller_keeps_the_first_come_queue():
    async def run():
        gate = Gate("router", 2, 3)
        order, release = [], asyncio.Event()
        tasks = [asyncio.create_task(_hold(gate, "other", order, release)) for _ in range(5)]
        await asyncio.sleep(0)
        assert (gate.in_flight, gate.waiting) == (2, 3)
        with pytest.raises(ResourceExhausted, match="2 requests in flight and 3 queued"):
            async with gate.slot("other"):
                pass
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())


def test_a_full_queue_gives_a_newcomer_the_place_of_the_caller_waiting_most():
    async def run():
        gate = Gate("tier small", 1, 4, weights={"flood": 1, "chat": 1})
        order, release = [], asyncio.Event()
        flood = [asyncio.create_task(_hold(gate, "flood", order, release)) for _ in range(5)]
        await asyncio.sleep(0)
        assert gate.waiting == 4
        chat = asyncio.create_task(_hold(gate, "chat", order, release))
        await asyncio.sleep(0)
        assert gate.waiting == 4  # the flood's newest place went to chat
        release.set()
        results = await asyncio.gather(*flood, chat, return_exceptions=True)
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(refused) == 1 and results[4] is refused[0]  # the flood's newest
        assert order.count("chat") == 1 and order.count("flood") == 4

    asyncio.run(run())


def test_a_cancelled_wait_leaves_the_line_and_its_slot_goes_on():
    async def run():
        gate = Gate("tier small", 1, 10, weights={"a": 1, "b": 1})
        order, release = [], asyncio.Event()
        first = asyncio.create_task(_hold(gate, "a", order, release))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(_hold(gate, "b", order, release))
        last = asyncio.create_task(_hold(gate, "a", order, release))
        await asyncio.sleep(0)
        waiting.cancel()
        release.set()
        await asyncio.gather(first, last, waiting, return_exceptions=True)
        assert order == ["a", "a"] and (gate.in_flight, gate.waiting) == (0, 0)

    asyncio.run(run())


# -- a fleet ------------------------------------------------------------------------


def test_two_processes_on_one_store_enforce_one_limit(pg_url):
    from store import Store
    from store.schema import migrate
    from store.writer import StoreThreads
    from server.callers.fleet import FleetCounts

    async def run():
        clock = Clock()
        stores = [Store(pg_url) for _ in range(2)]
        migrate(stores[0])
        threads = [StoreThreads(s, 1) for s in stores]
        ledgers = [Ledger([CallerConfig("chat", requests_per_minute=4, budget_per_day=1.0)], clock=clock) for _ in range(2)]
        fleets = [FleetCounts(ledger, t) for ledger, t in zip(ledgers, threads)]
        for ledger in ledgers:
            for _ in range(2):
                with ledger.hold("chat"):
                    ledger.charge("chat", 10, 0.3)
        for fleet in fleets * 2:  # the second round reads what the other sent
            await fleet.sync()
        for ledger in ledgers:
            account = ledger.account("chat")
            assert account.requests.count(clock()) == 4 and account.spend.count(clock()) == pytest.approx(1.2)
            assert "budget_per_day of 1" in _refused(ledger, "chat").message or "requests_per_minute" in _refused(ledger, "chat").message
        for t, s in zip(threads, stores):
            t.close()
            s.close()

    asyncio.run(run())


@pytest.mark.parametrize("overrides, env, named", [
    (["callers=[{name: a}, {name: a}]"], {}, "bad config: callers[1] (a).name: the caller 'a' is given twice"),
    (["callers=[{name: a, tokens_per_minute: -1}]"], {}, "bad config: callers[0] (a).tokens_per_minute must be a number > 0, got -1"),
    (["callers=[{name: chat}]", "security.token_env=CALLER_TOKENS"], {"CALLER_TOKENS": f"chta:{TOKEN_A}"},
     "security.token_env (CALLER_TOKENS) entry 1: the token names caller 'chta', which is not in callers (chat)"),
])
def test_the_server_refuses_to_start_on_bad_callers_naming_the_field(overrides, env, named):
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "server", "--config", str(ROOT / "config/cpu.yaml"), "--port", "0", "--metrics-port", "-1"]
    out = subprocess.run(argv + [a for o in overrides for a in ("--set", o)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, **env})
    assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_an_outcome_is_stored_with_the_caller_of_the_answer(tmp_path):
    import time as clock

    from server.finished import Finished
    from server.routing.feedback import FeedbackTable, RecentAnswers
    from server.types import ChatMessage, Decision, GenerateInput, Timings, Usage

    recent = RecentAnswers(10, 3600)
    req = GenerateInput("r1", (ChatMessage("user", "What is 2 + 2?"),), caller="chat")
    now = clock.perf_counter()
    recent.listener(keep_text=False)(Finished(req, Decision("small", "S", 0.2, 0.45, "classifier"), "4", Usage(9, 1), Timings(), "MISS",
                                              True, None, now, now, now))
    table = FeedbackTable.open(tmp_path / "store.sqlite", 100)
    table.record("r1", recent.get("r1"), 5, None, "")
    assert table.store.query("SELECT request_id, caller, rating FROM feedback") == [("r1", "chat", 5)]
    table.close()


def test_a_tier_a_caller_floods_is_not_busy_for_another_caller_so_it_does_not_spill():
    from server.tiers.tier import Tier

    class Engine:
        model, ready = "S", True

        def unfinished_requests(self):
            return 0

    from prometheus_client import CollectorRegistry

    from server.config import ResilienceConfig
    from server.observe.metrics import RouterMetrics

    config = load(ROOT / "config/cpu.yaml").tiers["small"]  # 16 slots, 32 queued
    tier = Tier(config, Engine(), ResilienceConfig(), RouterMetrics(CollectorRegistry(), ("small", "large")),
                weights={"flood": 1, "chat": 1}, headroom=1)

    async def run():
        release = asyncio.Event()
        flood = [asyncio.create_task(_hold(tier.gate, "flood", [], release)) for _ in range(15 + 32)]
        await asyncio.sleep(0)
        assert (tier.gate.in_flight, tier.gate.waiting) == (15, 32)
        assert tier.busy_reason(0.25, "flood") == "queue_full" and tier.busy_reason(0.25, "chat") is None
        release.set()
        await asyncio.gather(*flood)

    asyncio.run(run())
