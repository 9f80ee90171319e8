"""The committed stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("router_pb2.py", "router_pb2_grpc.py", "router_pb2.pyi")


def test_generated_stubs_match_the_proto(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Itriage_proto=proto", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", "triage_proto/router.proto"],
        cwd=ROOT, check=True, capture_output=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "triage_proto" / name).read_text()
        committed = (ROOT / "triage_proto" / name).read_text()
        assert fresh == committed, f"triage_proto/{name} is stale: run `make proto` and commit"
