"""How long an idle server takes to stop on SIGTERM, and what it logs.

    python -m benchmarks.shutdown [--config config/cpu.yaml]

Starts `python -m server` on free ports, waits until it is SERVING, sends
SIGTERM, and prints the seconds until the process exited and how many
ERROR, traceback and warning lines it wrote after "stopping".
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time

from clients import TriageClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shutdown", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cpu.yaml")
    args = parser.parse_args(argv)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--config", args.config, "--port", "0", "--metrics-port", "-1"],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        address = re.search(r"gRPC on ([\d.]+:\d+)", proc.stdout.readline()).group(1)
        with TriageClient(address, timeout=10) as client:
            deadline = time.monotonic() + 600
            while client.health() != "SERVING":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server never became SERVING")
                time.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        seconds = time.monotonic() - started
        log.seek(0)
        text = log.read()
    tail = text[text.find("stopping"):]
    print(json.dumps({
        "exit_code": code, "stop_seconds": round(seconds, 2),
        "error_lines": len(re.findall(r" ERROR ", tail)), "tracebacks": tail.count("Traceback"),
        "exception_ignored": tail.count("Exception ignored"), "warning_lines": len(re.findall(r" WARNING |Warning", tail)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
