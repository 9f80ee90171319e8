"""What a person reads from the CLI: JSON that keeps false, zero and 64-bit
fields as they are, and errors that say something."""

from __future__ import annotations

import grpc

from clients.cli import to_dict
from clients.errors import from_rpc_error
from triage_proto import router_pb2 as pb


def test_json_keeps_false_and_zero_fields_and_int64_numbers():
    models = pb.ListModelsResponse(tiers=[pb.TierInfo(tier_name="small", ready=False, load_seconds=0.0)])
    d = to_dict(models)
    assert d["tiers"][0]["ready"] is False and d["tiers"][0]["load_seconds"] == 0.0  # before: both left out
    r = pb.GenerateResponse(effective_sampling=pb.EffectiveSampling(temperature=0.0, top_k=0))
    r.retrieval.sources.add(document="a.md", chunk=0)
    d = to_dict(r)
    assert d["effective_sampling"]["temperature"] == 0.0 and d["effective_sampling"]["top_k"] == 0
    assert d["retrieval"]["sources"][0]["chunk"] == 0
    stats = pb.GetStatsResponse(total_requests=12, requests_by_code={"OK": 12}, tiers=[pb.TierStats(requests=3, completion_tokens=40)])
    d = to_dict(stats)
    assert d["total_requests"] == 12 and d["requests_by_code"] == {"OK": 12}  # before: "12" strings
    assert d["tiers"][0]["requests"] == 3 and d["tiers"][0]["completion_tokens"] == 40


class _Rpc(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.NOT_FOUND

    def details(self):
        return ""

    def trailing_metadata(self):
        return ()


def test_an_error_without_details_still_says_what_it_is():
    err = from_rpc_error(_Rpc())
    assert err.message == "NOT_FOUND: not found" and err.retry_after_ms is None


def test_a_closed_pipe_ends_the_cli_quietly():
    """`triage ... | head` closes the pipe early: exit 0, no traceback."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from clients import cli\n"
              "def flood(client, args):\n"
              "    for i in range(100000):\n"
              "        print('tier', i)\n"
              "    return 0\n"
              "cli.cmd_models = flood\n"
              "sys.exit(cli.main(['--address', '127.0.0.1:1', 'models']))\n")
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1", shell=True, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "tier 0\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
