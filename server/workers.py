"""Several router processes on one port (`server.workers`), for more
streams than one core can carry.

One Python process spends a core at about one GPU's output of streamed
tokens (docs/benchmarks.md, section 12): every token is a message through
grpc.aio or aiohttp, and their own cost per message sets a floor no router
code removes (benchmarks.stream_floor). Past that, the router scales as
grpc's multiprocessing example does: N independent processes bind the same
gRPC and HTTP ports with SO_REUSEPORT, and the kernel spreads *connections*
over them. This module is the supervisor that starts them, restarts one that
dies, and stops them all on SIGTERM.

Each worker is the whole router with its own state; what that means is in
docs/deployment.md ("Several workers"). In short: a connection stays on one
worker, so a client's cache hits, session and feedback (which travel on the
channel that got the answer) stay together; the target share holds overall
because every worker holds it on its own traffic; the feedback store is one
SQLite file that every worker writes (WAL, its busy timeout); limits,
caches and /metrics are per worker (worker i serves /metrics on the
metrics port + i).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from .config import Config, ConfigError

log = logging.getLogger("triage.workers")

# Set in a worker's environment: its index (0..N-1). The one way a process
# learns it is a worker rather than the supervisor.
WORKER_ENV = "TRIAGE_WORKER_INDEX"
RESTART_DELAY_S = (1.0, 30.0)  # first and longest wait before restarting a worker that died
POLL_S = 0.2


def check(config: Config) -> None:
    """What several workers need, said before any starts."""
    n = config.server.workers
    if n == 1:
        return
    in_process = [name for name, tier in config.tiers.items() if tier.backend == "in_process"]
    if in_process:
        raise ConfigError(f"server.workers: {n} workers need every tier to be remote or smg; {in_process} would load "
                          f"its engine once in every worker (run the engines with `vllm serve` and point remote tiers at them)")
    s = config.server
    zero = [name for name, port in (("port", s.port), ("http_port", s.http_port), ("metrics_port", s.metrics_port)) if port == 0]
    if zero:
        raise ConfigError(f"server.workers: {n} workers share fixed ports; {zero} cannot be 0 (a free port differs per process)")


def worker_index() -> int | None:
    """This process's index when it is one of several workers, else None."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def for_worker(config: Config, index: int) -> Config:
    """Worker `index`'s settings: the profile's, with its own metrics port."""
    metrics = config.server.metrics_port
    return config.with_ports(None, metrics + index if metrics > 0 else metrics)


class Supervisor:
    """Starts `n` copies of this command as workers and keeps them running
    until SIGTERM or SIGINT, which it passes on to every one."""

    def __init__(self, n: int, argv: Sequence[str]):
        self.argv = [sys.executable, "-m", "server", *argv]
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.delays = [RESTART_DELAY_S[0]] * n
        self.started = [0.0] * n
        self.stopping = False

    def _start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(self.argv, env={**os.environ, WORKER_ENV: str(i)})
        self.started[i] = time.monotonic()
        log.info("worker %d started (pid %d)", i, self.procs[i].pid)

    def _stop(self, *_) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for i in range(len(self.procs)):
            self._start(i)
        due: dict[int, float] = {}  # worker -> when it starts again
        while not self.stopping:
            time.sleep(POLL_S)
            for i, proc in enumerate(self.procs):
                if i in due:
                    if time.monotonic() >= due[i] and not self.stopping:
                        del due[i]
                        self._start(i)
                elif proc is not None and proc.poll() is not None:
                    self._exited(i, proc, due)
        codes = [proc.wait() for proc in self.procs if proc is not None]
        return max(codes, default=0)

    def _exited(self, i: int, proc: subprocess.Popen, due: dict[int, float]) -> None:
        """A worker died under us: the others go on serving; it starts again
        after a delay that doubles while it keeps dying young. A bad
        configuration (exit 2) would only die again: everything stops."""
        if proc.returncode == 2:
            log.error("worker %d exited with 2 (bad configuration): stopping every worker", i)
            self._stop()
            return
        if time.monotonic() - self.started[i] > 60.0:
            self.delays[i] = RESTART_DELAY_S[0]
        log.error("worker %d (pid %d) exited with %s; starting it again in %.0f s", i, proc.pid, proc.returncode, self.delays[i])
        due[i] = time.monotonic() + self.delays[i]
        self.delays[i] = min(self.delays[i] * 2, RESTART_DELAY_S[1])
