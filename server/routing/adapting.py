"""The adapter loop (`routing.adapt`): the router learns, from the store's
outcomes, where this deployment's cheap tier does not suffice.

- Every outcome of the cheapest tier this process stores (a shadow
  comparison or a Feedback) is counted; after `every` of them a fit starts
  in a child process, `python -m classifier adapt`, so no request waits
  and the fit's numpy and scikit-learn work never holds this loop's GIL.
- One fit at a time in the whole fleet: the fitter holds the store's
  `adapter-fit` lease (a row in `leases`, store/schema.py) while it runs; a
  process that finds it held skips its turn (the fit reads every process's
  outcomes anyway). A holder that dies loses it after `fit_timeout_s`.
- The child writes an artifact folder (prior + adapter) only when the
  adapter ranks the newest quarter of the outcomes better than the prior
  (classifier/adapter.py); otherwise it exits 1 with the figures. Either
  way one log line says what happened, with the figures, and
  `router_adapter_fits_total{result}` counts it (adopted, refused, failed).
- An adopted folder is stored in the store (`adapters`, as a gzip'd tar)
  with its generation, and `adapter_state` names which one routes and
  counts a version. Every process looks at that version every `poll_s`
  (and at start): a newer one is unpacked under `routing.adapt.dir`,
  loaded in a worker thread and swapped into the routing policy between
  requests (one attribute assignment). The adopted adapter and the one
  before it are kept. `revert("previous")` swaps the two, `revert("prior")`
  routes with the prior alone, for the whole fleet (the RevertAdapter RPC
  and `triage adapter revert`).

Pure asyncio, files and the store: no grpc here.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from store import StoreUnavailable

from ..config import AdaptConfig
from ..errors import FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger("triage.adapt")

REVERT_TARGETS = ("previous", "prior")
LEASE = "adapter-fit"
EMPTY = {"current": None, "previous": None, "version": 0, "reports": {}, "digests": {}}


def _name(generation: int | None) -> str | None:
    return None if generation is None else f"gen-{generation:04d}"


class Adaptation:
    def __init__(self, config: AdaptConfig, threads, cheap_tier: str, prior_path: str | None, metrics,
                 use: Callable[[object], None], load: Callable[[str | None], object]):
        """`threads`: store.writer.StoreThreads (the store's calls off the loop);
        `use(classifier)`: route with it from now on (the policy's scorer);
        `load(folder)`: classifier.load, called in a worker thread."""
        self.config, self.threads, self.store = config, threads, threads.store
        self.cheap_tier, self.prior_path = cheap_tier, prior_path
        self.folder = Path(config.dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics, self._use, self._load = metrics, use, load
        self.state = dict(EMPTY)  # what this process routes with: store.adapter_state as last followed
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.pending = 0  # outcomes of the cheap tier stored since the last fit started
        self.fits: Counter[str] = Counter()
        self.last: dict = {}  # the last fit's report
        self._prior = None  # set by start()
        self._fit: asyncio.Task | None = None
        self._poll: asyncio.Task | None = None

    # -- the store's state ----------------------------------------------------------

    def _read_state(self) -> dict:
        """adapter_state, with the two named generations' reports and digests (blocking)."""
        current, previous, version = self.store.query("SELECT current_generation, previous_generation, version FROM adapter_state")[0]
        rows = self.store.query("SELECT generation, report, digest FROM adapters WHERE generation IN (?, ?)", (current or -1, previous or -1))
        return {"current": _name(current), "previous": _name(previous), "version": version,
                "reports": {_name(g): json.loads(r) for g, r, _ in rows}, "digests": {_name(g): d for g, _, d in rows}}

    def _local(self, name: str, digest: str) -> Path:
        """Where a generation is unpacked: named by its content too, so a
        folder left by another store (or one since reset) is never taken for it."""
        return self.folder / f"{name}-{digest[:16]}"

    def _unpacked(self, state: dict) -> Path:
        """The current generation's folder under routing.adapt.dir, unpacked
        from the store unless a process on this host did it already; folders
        of generations the store no longer names are removed (blocking)."""
        name = state["current"]
        folder = self._local(name, state["digests"][name])
        if not folder.is_dir():
            (blob,) = self.store.query("SELECT artifact FROM adapters WHERE generation = ?", (int(name[4:]),))[0]
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.folder))
            with tarfile.open(fileobj=io.BytesIO(bytes(blob)), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.rename(tmp, folder)  # whole or not at all; another worker may have won
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        self._tidy(state)
        return folder

    def _tidy(self, state: dict) -> None:
        keep = {self._local(n, d).name for n, d in state["digests"].items()}
        for child in self.folder.glob("gen-*"):
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def _follow(self, state: dict):
        """The classifier `state` routes with (blocking: unpack, load)."""
        return self._load(str(self._unpacked(state))) if state["current"] else self._prior

    def start(self, prior):
        """The classifier to route with at start: the adapter the store names, else `prior`."""
        self._prior = getattr(prior, "prior", prior)  # what `revert("prior")` routes with
        self.state = self._read_state()
        clf = self._follow(self.state)
        self._export()
        if self.state["current"]:
            log.info("routing with adapter %s (%s)", self.state["current"], _figures(self.state["reports"].get(self.state["current"], {})))
        return clf

    def _export(self) -> None:
        report = self.state["reports"].get(self.state["current"] or "", {})
        self.metrics.adapter_outcomes.set(report.get("outcomes", 0))
        self.metrics.adapter_held_out_apgr.set(report.get("held_out_apgr", {}).get("adapter", -1.0))

    def poll(self) -> None:
        """Follow the store from now on: every poll_s, a newer adapter_state is routed with."""
        if self._poll is None:
            self._poll = asyncio.get_running_loop().create_task(self._polling(), name="adapter-poll")

    async def _polling(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("adapter").inc()
                log.debug("adapter state not read: %s", exc)
            except Exception:  # an adapter that does not load is not routed with; the loop goes on
                log.exception("following the store's adapter failed; routing is unchanged")

    async def refresh(self) -> bool:
        """Route with what the store names, if it changed since; True if it did."""
        (version,) = (await self.threads.call(self.store.query, "SELECT version FROM adapter_state"))[0]
        if version == self.state["version"]:
            return False
        state = await self.threads.call(self._read_state)
        clf = await self.threads.call(self._follow, state)
        self._use(clf)
        self.state = state
        self._export()
        log.info("adapter state %d from the store: %s routes", state["version"], state["current"] or "the prior")
        return True

    # -- the loop ---------------------------------------------------------------

    def outcome_stored(self, tier: str) -> None:
        """An outcome was committed to the store (call on the event loop)."""
        if tier != self.cheap_tier:
            return
        self.pending += 1
        if self.pending >= self.config.every and (self._fit is None or self._fit.done()):
            self.pending = 0
            self._fit = asyncio.get_running_loop().create_task(self._leased_fit())

    async def _leased_fit(self) -> None:
        """A fit, if no other process is fitting (the store's lease)."""
        try:
            held = await self.threads.call(self._take_lease)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("adapter").inc()
            log.warning("adapter fit skipped: %s", exc)
            return
        if not held:
            log.info("adapter fit skipped: another process holds the %s lease", LEASE)
            return
        try:
            await self._run_fit()
        finally:
            try:
                await self.threads.call(self.store.execute, "DELETE FROM leases WHERE name = ? AND holder = ?", (LEASE, self.holder))
            except StoreUnavailable:  # it lapses by itself
                pass

    def _take_lease(self) -> bool:
        now = time.time()
        return self.store.execute("INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                                  "until = excluded.until WHERE leases.until < ?", (LEASE, self.holder, now + self.config.fit_timeout_s + 60, now)) == 1

    async def _run_fit(self) -> None:
        out = Path(tempfile.mkdtemp(prefix=".fit-", dir=self.folder))
        cmd = [sys.executable, "-m", "classifier", *(["--model", self.prior_path] if self.prior_path else []), "adapt",
               "--feedback", self.store.url, "--out", str(out), "--cheap-tier", self.cheap_tier, "--min-rows", str(self.config.min_outcomes)]
        started = time.monotonic()
        try:
            code, stdout, stderr = await self._child(cmd)
            report = json.loads(stdout) if code in (0, 1) else {}
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            code, report, stderr = -1, {}, str(exc)
        report["seconds"] = round(time.monotonic() - started, 1)
        report.pop("store", None)  # its URL may name a user
        self.last = report
        try:
            if code == 0:
                clf = await asyncio.to_thread(self._load, str(out))
                await self._adopt(out, clf, report)
                return
        except StoreUnavailable as exc:
            code, stderr = -1, f"the adopted adapter could not be stored: {exc}"
        except Exception as exc:  # a written folder that does not load is a failed fit, never a crash
            code, stderr = -1, f"the written adapter {out} does not load: {exc}"
        finally:
            shutil.rmtree(out, ignore_errors=True)
        result = "refused" if code == 1 else "failed"
        self.fits[result] += 1
        self.metrics.adapter_fits.labels(result).inc()
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

    async def _adopt(self, out: Path, clf, report: dict) -> None:
        """Store the folder as the next generation, route with it here; the others follow."""
        blob = io.BytesIO()
        with tarfile.open(fileobj=blob, mode="w:gz") as tar:
            for child in sorted(out.iterdir()):
                tar.add(child, arcname=child.name)
        artifact = blob.getvalue()
        digest = hashlib.sha256(artifact).hexdigest()
        generation = await self.threads.call(self._store_adopted, artifact, digest, report)
        name = _name(generation)
        if not self._local(name, digest).is_dir():  # the same bytes unpacked already: keep those
            os.rename(out, self._local(name, digest))
        self._use(clf)
        self.state = await self.threads.call(self._read_state)
        self._tidy(self.state)
        self.fits["adopted"] += 1
        self.metrics.adapter_fits.labels("adopted").inc()
        self._export()
        log.info("adapter %s adopted: %s", name, _figures(report))

    def _store_adopted(self, artifact: bytes, digest: str, report: dict) -> int:
        with self.store.transaction() as tx:
            current, _, version = self._lock_state(tx)
            (latest,) = tx.query("SELECT COALESCE(MAX(generation), 0) FROM adapters")[0]
            generation = latest + 1
            tx.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?)",
                       (generation, _name(generation), time.time(), json.dumps(report), digest, artifact))
            self._set_state(tx, generation, current, version)
        return generation

    def _lock_state(self, tx) -> tuple[int | None, int | None, int]:
        """(current generation, previous, version), held until the transaction ends (SQLite: BEGIN IMMEDIATE)."""
        lock = " FOR UPDATE" if self.store.dialect == "postgresql" else ""
        return tuple(tx.query(f"SELECT current_generation, previous_generation, version FROM adapter_state{lock}")[0])

    @staticmethod
    def _set_state(tx, current: int | None, previous: int | None, version: int) -> None:
        tx.execute("UPDATE adapter_state SET current_generation = ?, previous_generation = ?, version = ?", (current, previous, version + 1))
        tx.execute("DELETE FROM adapters WHERE generation NOT IN (?, ?)", (current or -1, previous or -1))

    # -- operator ----------------------------------------------------------------

    async def revert(self, to: str) -> dict:
        """Route with the previous adapter (the two swap places) or with the
        prior alone, here and, through the store, everywhere; a fit in
        flight here is stopped. Returns the status."""
        if to not in REVERT_TARGETS:
            raise InvalidArgument("to", f"must be one of {list(REVERT_TARGETS)}, got {to!r}")
        try:
            state = await self.threads.call(self._read_state)
            _check_revert(to, state["current"], state["previous"])  # before a fit in flight is stopped for it
            await self.close()
            await self.threads.call(self._store_revert, to)
            self.state = {**self.state, "version": -1}  # whatever the store now says is new
            await self.refresh()
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("adapter").inc()
            raise Unavailable(f"routing.adapt: the store cannot be changed now, nothing was reverted ({exc})") from None
        log.info("adapter reverted to %s: %s routes now", to, self.state["current"] or "the prior")
        return self.status()

    def _store_revert(self, to: str) -> None:
        with self.store.transaction() as tx:
            current, previous, version = self._lock_state(tx)
            _check_revert(to, current, previous)  # again under the lock: another process may have changed it
            self._set_state(tx, previous if to == "previous" else None, current, version)

    def status(self) -> dict:
        report = self.state["reports"].get(self.state["current"] or "", {})
        apgr = report.get("held_out_apgr", {})
        return {
            "enabled": True, "current": self.state["current"] or "", "previous": self.state["previous"] or "",
            "generation": int((self.state["current"] or "gen-0")[4:]), "outcomes": report.get("outcomes", 0),
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
        """Stop the fit in flight (the polling goes on: see stop)."""
        if self._fit is not None and not self._fit.done():
            self._fit.cancel()
            await asyncio.gather(self._fit, return_exceptions=True)

    async def stop(self) -> None:
        await self.close()
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)


def _check_revert(to: str, current, previous) -> None:
    if to == "previous" and previous is None:
        raise FailedPrecondition("routing.adapt: there is no previous adapter to revert to")
    if to == "prior" and current is None:
        raise FailedPrecondition("routing.adapt: the prior alone already routes")


def _figures(report: dict) -> str:
    apgr = report.get("held_out_apgr")
    if not apgr:
        return f"{report.get('outcomes', '?')} outcomes"
    return (f"{report.get('outcomes')} outcomes, held-out APGR {apgr['adapter']:.3f} (prior {apgr['prior']:.3f}, "
            f"length {apgr['length']:.3f}), better in {report.get('held_out_wins', 0):.0%} of resamples, {report.get('seconds', '?')} s")
