"""The adapter loop's lifecycle (server/routing/adapting.py) with real fits (the
`python -m classifier adapt` child) and no engine: what is adopted is
routed with, kept across a restart, and reverted; a fit that cannot run is
counted as failed and changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

import classifier
from store import Store
from store.writer import StoreThreads
from server.routing.adapting import Adaptation
from server.config import AdaptConfig
from server.errors import FailedPrecondition, InvalidArgument
from server.observe.metrics import RouterMetrics

from .test_adapter import fill

QUESTION = "Who is the prime minister of Peru?"  # the kind test_adapter's stores say the cheap tier fails


class Routing:
    """Stands in for the policy: remembers what it was told to score with."""

    def __init__(self):
        self.clf = None

    def use(self, clf) -> None:
        self.clf = clf


def make(tmp_path, store, routing: Routing, prior_path=None, every: int = 600):
    metrics = RouterMetrics(CollectorRegistry())
    threads = StoreThreads(Store(f"sqlite:///{store}"))
    adaptation = Adaptation(AdaptConfig(enabled=True, every=every, min_outcomes=200, dir=str(tmp_path / "adapters")), threads, "small",
                            prior_path, metrics, use=routing.use, load=classifier.load)
    return adaptation, metrics


def feed(adaptation, n: int) -> None:
    for _ in range(n):
        adaptation.outcome_stored("small")


def test_adopted_adapters_route_survive_a_restart_and_revert(tmp_path):
    async def run():
        fill(tmp_path / "f.sqlite", 600)
        # Folders another store left in adapt.dir (CI found one from an earlier run): never taken for this store's.
        for stale in ("gen-0001", "gen-0001-0123456789abcdef"):
            (tmp_path / "adapters" / stale).mkdir(parents=True)
            (tmp_path / "adapters" / stale / "adapter.json").write_text("{}")
        prior, routing = classifier.load(), Routing()
        adaptation, metrics = make(tmp_path, tmp_path / "f.sqlite", routing)
        routing.use(adaptation.start(prior))
        feed(adaptation, 599)
        adaptation.outcome_stored("large")  # another tier's outcome is not counted
        assert adaptation.status()["pending_outcomes"] == 599 and not adaptation.status()["fitting"]
        feed(adaptation, 1)
        await adaptation.wait_idle()
        status = adaptation.status()
        assert status["current"] == "gen-0001" and status["fits_adopted"] == 1 and status["outcomes"] == 600
        assert metrics.registry.get_sample_value("router_adapter_fits_total", {"result": "adopted"}) == 1
        assert metrics.registry.get_sample_value("router_adapter_held_out_apgr") == pytest.approx(status["held_out_apgr"])
        assert routing.clf.score([QUESTION])[0] > prior.score([QUESTION])[0] + 0.3
        adapted = float(routing.clf.score([QUESTION])[0])

        # A second adoption keeps the one before it; older ones are removed.
        feed(adaptation, 600)
        await adaptation.wait_idle()
        assert adaptation.status()["current"] == "gen-0002" and adaptation.status()["previous"] == "gen-0001"
        assert sorted(p.name[:8] for p in (tmp_path / "adapters").glob("gen-*")) == ["gen-0001", "gen-0002"]

        # A restart routes with what was last adopted.
        again, _ = make(tmp_path, tmp_path / "f.sqlite", Routing())
        assert again.start(prior).score([QUESTION])[0] == pytest.approx(routing.clf.score([QUESTION])[0])

        # Revert to the prior, then to the previous adapter; each survives a restart.
        status = await adaptation.revert("prior")
        assert status["current"] == "" and status["previous"] == "gen-0002"
        assert routing.clf.score([QUESTION])[0] == prior.score([QUESTION])[0]
        assert make(tmp_path, tmp_path / "f.sqlite", Routing())[0].start(prior) is prior
        status = await adaptation.revert("previous")
        assert status["current"] == "gen-0002" and status["previous"] == ""
        assert routing.clf.score([QUESTION])[0] == pytest.approx(adapted, abs=0.05)
        assert make(tmp_path, tmp_path / "f.sqlite", Routing())[0].start(prior).score([QUESTION])[0] == pytest.approx(adapted, abs=0.05)
        with pytest.raises(FailedPrecondition, match="no previous adapter"):
            await adaptation.revert("previous")
        with pytest.raises(InvalidArgument, match="previous"):
            await adaptation.revert("yesterday")

    asyncio.run(run())


def test_a_fit_that_cannot_run_is_counted_as_failed_and_changes_nothing(tmp_path):
    async def run():
        fill(tmp_path / "f.sqlite", 600)
        routing = Routing()
        adaptation, metrics = make(tmp_path, tmp_path / "f.sqlite", routing, prior_path=str(tmp_path / "no-such-artifact"))
        prior = classifier.load()
        routing.use(adaptation.start(prior))
        feed(adaptation, 600)
        await adaptation.wait_idle()
        status = adaptation.status()
        assert status["fits_failed"] == 1 and status["current"] == "" and routing.clf is prior
        assert metrics.registry.get_sample_value("router_adapter_fits_total", {"result": "failed"}) == 1
        assert not list((tmp_path / "adapters").iterdir())

    asyncio.run(run())
