"""The adapter loop (`routing.adapt`): the router learns, from its own
feedback store, where this deployment's cheap tier does not suffice.

- Every outcome of the cheapest tier that reaches the store (a shadow
  comparison or a Feedback) is counted; after `every` of them a fit starts
  in a child process, `python -m classifier adapt`, so no request waits
  and the fit's numpy and scikit-learn work never holds this loop's GIL.
  One fit at a time; outcomes that arrive meanwhile count toward the next.
- The child writes an artifact folder (prior + adapter) only when the
  adapter ranks the newest quarter of the outcomes better than the prior
  (classifier/adapter.py); otherwise it exits 1 with the figures. Either
  way one log line says what happened, with the figures, and
  `router_adapter_fits_total{result}` counts it (adopted, refused, failed).
- An adopted folder is loaded in a worker thread and swapped into the
  routing policy between requests (one attribute assignment). The adopted
  adapter and the one before it are kept under `routing.adapt.dir`, with
  `state.json` naming which routes; a restart routes with it again.
  `revert("previous")` swaps the two, `revert("prior")` routes with the
  prior alone (the RevertAdapter RPC and `triage adapter revert`).

Pure asyncio and files: no grpc here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from ..config import AdaptConfig
from ..errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("triage.adapt")

STATE_FILE = "state.json"
REVERT_TARGETS = ("previous", "prior")


class Adaptation:
    def __init__(self, config: AdaptConfig, store_path: str, cheap_tier: str, prior_path: str | None, metrics,
                 use: Callable[[object], None], load: Callable[[str | None], object]):
        """`use(classifier)`: route with it from now on (the policy's scorer);
        `load(folder)`: classifier.load, called in a worker thread."""
        self.config, self.store_path, self.cheap_tier, self.prior_path = config, store_path, cheap_tier, prior_path
        self.folder = Path(config.dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics, self._use, self._load = metrics, use, load
        self.state = self._read_state()
        self.pending = 0  # outcomes of the cheap tier stored since the last fit started
        self.fits: Counter[str] = Counter()
        self.last: dict = {}  # the last fit's report
        self._prior = None  # set by start()
        self._fit: asyncio.Task | None = None

    # -- state ---------------------------------------------------------------

    def _read_state(self) -> dict:
        path = self.folder / STATE_FILE
        if not path.is_file():
            return {"current": None, "previous": None, "generation": 0, "reports": {}}
        return json.loads(path.read_text())

    def _write_state(self) -> None:
        """state.json replaced in one rename; generations it no longer names removed."""
        tmp = self.folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.folder / STATE_FILE)
        keep = {self.state["current"], self.state["previous"]}
        for child in self.folder.glob("gen-*"):
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
        self.state["reports"] = {k: v for k, v in self.state["reports"].items() if k in keep}

    def start(self, prior):
        """The classifier to route with at start: the adopted adapter a
        previous run left (state.json), else `prior`."""
        self._prior = getattr(prior, "prior", prior)  # what `revert("prior")` routes with
        current = self.state["current"]
        clf = self._load(str(self.folder / current)) if current else prior
        self._export()
        if current:
            log.info("routing with adapter %s (%s)", current, _figures(self.state["reports"].get(current, {})))
        return clf

    def _export(self) -> None:
        report = self.state["reports"].get(self.state["current"] or "", {})
        self.metrics.adapter_outcomes.set(report.get("outcomes", 0))
        self.metrics.adapter_held_out_apgr.set(report.get("held_out_apgr", {}).get("adapter", -1.0))

    # -- the loop ---------------------------------------------------------------

    def outcome_stored(self, tier: str) -> None:
        """An outcome was committed to the store (call on the event loop)."""
        if tier != self.cheap_tier:
            return
        self.pending += 1
        if self.pending >= self.config.every and (self._fit is None or self._fit.done()):
            self.pending = 0
            self._fit = asyncio.get_running_loop().create_task(self._run_fit())

    async def _run_fit(self) -> None:
        generation = self.state["generation"] + 1
        name = f"gen-{generation:04d}"
        out = self.folder / name
        cmd = [sys.executable, "-m", "classifier", *(["--model", self.prior_path] if self.prior_path else []), "adapt",
               "--feedback", self.store_path, "--out", str(out), "--cheap-tier", self.cheap_tier, "--min-rows", str(self.config.min_outcomes)]
        started = time.monotonic()
        try:
            code, stdout, stderr = await self._child(cmd)
            report = json.loads(stdout) if code in (0, 1) else {}
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            code, report, stderr = -1, {}, str(exc)
        report["seconds"] = round(time.monotonic() - started, 1)
        self.last = report
        if code == 0:
            try:
                clf = await asyncio.to_thread(self._load, str(out))
            except Exception as exc:  # a written folder that does not load is a failed fit, never a crash
                code, stderr = -1, f"the written adapter {out} does not load: {exc}"
            else:
                self._adopt(name, generation, clf, report)
                return
        result = "refused" if code == 1 else "failed"
        self.fits[result] += 1
        self.metrics.adapter_fits.labels(result).inc()
        shutil.rmtree(out, ignore_errors=True)
        if result == "refused":
            log.info("adapter fit refused: %s (%s)", report.get("refused_because", "?"), _figures(report))
        else:
            log.warning("adapter fit failed (exit %s): %s", code, stderr.strip()[-500:])

    async def _child(self, cmd: list[str]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of the fit's child process."""
        process = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self.config.fit_timeout_s)
        except BaseException:  # timed out, or the router stops or reverts: the child goes too
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    def _adopt(self, name: str, generation: int, clf, report: dict) -> None:
        self._use(clf)
        self.state.update(previous=self.state["current"], current=name, generation=generation)
        self.state["reports"][name] = report
        self._write_state()
        self.fits["adopted"] += 1
        self.metrics.adapter_fits.labels("adopted").inc()
        self._export()
        log.info("adapter %s adopted: %s", name, _figures(report))

    # -- operator ----------------------------------------------------------------

    async def revert(self, to: str) -> dict:
        """Route with the previous adapter (the two swap places) or with the
        prior alone; a fit in flight is stopped. Returns the status."""
        if to not in REVERT_TARGETS:
            raise InvalidArgument("to", f"must be one of {list(REVERT_TARGETS)}, got {to!r}")
        current, previous = self.state["current"], self.state["previous"]
        if to == "previous" and previous is None:
            raise FailedPrecondition("routing.adapt: there is no previous adapter to revert to")
        if to == "prior" and current is None:
            raise FailedPrecondition("routing.adapt: the prior alone already routes")
        await self.close()
        target = previous if to == "previous" else None
        clf = await asyncio.to_thread(self._load, str(self.folder / target)) if target else self._prior
        self._use(clf)
        self.state.update(current=target, previous=current)
        self._write_state()
        self._export()
        log.info("adapter reverted to %s: %s routes now", to, target or "the prior")
        return self.status()

    def status(self) -> dict:
        report = self.state["reports"].get(self.state["current"] or "", {})
        apgr = report.get("held_out_apgr", {})
        return {
            "enabled": True, "current": self.state["current"] or "", "previous": self.state["previous"] or "",
            "generation": self.state["generation"], "outcomes": report.get("outcomes", 0),
            "held_out_apgr": apgr.get("adapter", -1.0), "prior_held_out_apgr": apgr.get("prior", -1.0),
            "fits_adopted": self.fits["adopted"], "fits_refused": self.fits["refused"], "fits_failed": self.fits["failed"],
            "pending_outcomes": self.pending, "fitting": self._fit is not None and not self._fit.done(),
            "last_fit": self.last.get("refused_because", "adopted" if self.last.get("adopted") else ""),
        }

    async def wait_idle(self) -> None:
        """Until the fit in flight, if any, has ended (tests, shutdown)."""
        if self._fit is not None:
            await asyncio.gather(self._fit, return_exceptions=True)

    async def close(self) -> None:
        if self._fit is not None and not self._fit.done():
            self._fit.cancel()
            await asyncio.gather(self._fit, return_exceptions=True)


def _figures(report: dict) -> str:
    apgr = report.get("held_out_apgr")
    if not apgr:
        return f"{report.get('outcomes', '?')} outcomes"
    return (f"{report.get('outcomes')} outcomes, held-out APGR {apgr['adapter']:.3f} (prior {apgr['prior']:.3f}, "
            f"length {apgr['length']:.3f}), better in {report.get('held_out_wins', 0):.0%} of resamples, {report.get('seconds', '?')} s")
