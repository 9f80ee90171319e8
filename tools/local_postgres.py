"""A throwaway PostgreSQL server for tests and benchmarks: a new cluster
in a folder, on a loopback port, trusted to its own user, stopped (or
killed, for fault tests) by the caller. It uses the distribution's server
(Debian's `postgresql`, which `make test-deps` installs); a root caller
runs it as the `postgres` user, since PostgreSQL refuses to run as root.

    python -m tools.local_postgres --dir DIR --port 5433   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "triage"


def bindir() -> Path:
    """The newest installed server's binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise FileNotFoundError("no PostgreSQL server installed: `make test-deps` installs Debian's postgresql")


class LocalPostgres:
    def __init__(self, port: int, folder: Path | None = None):
        """`folder`: None for a new one under the system's temporary folder,
        which the `postgres` user can reach (a test's tmp_path is private to root)."""
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="triage-pg-"))
            folder.chmod(0o755)
        self.folder, self.port = Path(folder), port
        self.data = self.folder / "data"
        self.url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        self.process: subprocess.Popen | None = None
        self._bin = bindir()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stdout}{done.stderr}")

    def init(self) -> "LocalPostgres":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self, timeout: float = 30) -> "LocalPostgres":
        """Start the server (again, after a kill) and wait until it takes connections."""
        log = open(self.folder / "postgres.log", "a")
        self.process = subprocess.Popen([*self._as, str(self._bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                         "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while subprocess.run([str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-q"]).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(self.folder / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend, as a crash would."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._wait_gone()
            self.process = None

    def _wait_gone(self, timeout: float = 30) -> None:
        """Until no process of the old server is left (a backend still
        attached to its shared memory keeps a new postmaster from starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def remove(self) -> None:
        """Stop, and remove the folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(30)
                self._wait_gone()
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--port", type=int, default=5433)
    args = ap.parse_args()
    pg = LocalPostgres(args.port, args.dir)
    if not pg.data.is_dir():
        pg.init()
    pg.start()
    print(f"store.url: {pg.url}", flush=True)
    try:
        pg.process.wait()
    except KeyboardInterrupt:
        pg.stop()


if __name__ == "__main__":
    main()
