"""Metrics, the dashboard, a real Prometheus, GetStats and the load generator,
against the real server with both real engines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/triage.json"

PER_TIER_HISTOGRAMS = [
    "router_time_to_first_token_seconds", "router_inter_token_latency_seconds", "router_generation_duration_seconds",
    "router_queue_duration_seconds", "router_routing_overhead_seconds", "router_request_prompt_tokens",
    "router_request_completion_tokens",
]


@pytest.fixture(scope="module")
def both_tiers_used(live):
    for route in ("small", "large"):
        live.client.generate("Name two rivers in Europe.", route=route, max_tokens=16)
        list(live.client.generate_stream("Name two mountains in Asia.", route=route, max_tokens=16))
    return live


def _count(text: str, metric: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((metric + "_count{", metric + "_count ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_histogram_is_populated_for_both_tiers(both_tiers_used):
    text = both_tiers_used.metrics()
    for tier in ("small", "large"):
        for metric in PER_TIER_HISTOGRAMS:
            assert _count(text, metric, tier=tier) > 0, (metric, tier)
        for rpc in ("Generate", "GenerateStream"):
            assert _count(text, "router_request_duration_seconds", rpc=rpc, tier=tier, code="OK") > 0
    assert _count(text, "router_classify_duration_seconds") > 0 and _count(text, "router_p_complex") > 0
    assert 'grpc_server_started_total{grpc_method="GenerateStream",grpc_service="router.v1.Router",grpc_type="server_stream"}' in text
    assert re.search(r'grpc_server_msg_sent_total\{grpc_method="GenerateStream"[^}]*\} [1-9]', text)
    assert "vllm:" not in text  # deliberately not exposed (docs/observability.md)


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr))
    return {n for n in names if n not in _PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", n)}


def test_dashboard_queries_use_only_exported_metrics(both_tiers_used):
    exported = set()
    for line in both_tiers_used.metrics().splitlines():
        if line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 14
    for expr in exprs:
        names = metric_names_in(expr)
        assert names, expr
        # smg_* come from the SMG gateways (config/smg.yaml): checked against a
        # real one in tests/integration/test_smg.py.
        missing = {n for n in names if not n.startswith("smg_")} - exported
        assert not missing, f"{expr} uses {missing}, which /metrics does not export"


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_and_computes_p95_per_tier(live, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed: `make test` installs it (as root)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: triage\n    static_configs: [{{targets: ['127.0.0.1:{live.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _query(port, "up") and _query(port, "up")[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        for _ in range(2):  # samples inside the rate window, for both tiers
            for route in ("small", "large"):
                live.client.generate("Name a colour.", route=route, max_tokens=8)
            time.sleep(1.5)
        promql = 'histogram_quantile(0.95, sum by (le, tier) (rate(router_request_duration_seconds_bucket{rpc="Generate"}[1m])))'
        deadline = time.monotonic() + 30
        while True:
            result = {r["metric"].get("tier"): float(r["value"][1]) for r in _query(port, promql)}
            if {"small", "large"} <= set(result) and all(v == v and v > 0 for k, v in result.items() if k in ("small", "large")):
                break
            assert time.monotonic() < deadline, f"no p95 for both tiers: {result}"
            time.sleep(1)
        # The dashboard's "saved vs always-large" panel, since start, is GetStats' saved share.
        saved = next(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"].startswith("Saved vs always-large")
                     for t in p["targets"] if t["refId"] == "A")
        stats = live.client.stats()
        time.sleep(2.5)  # two scrapes after the last request
        assert stats.cost > 0 and float(_query(port, saved)[0]["value"][1]) == pytest.approx(stats.saved_share, abs=1e-9)
    finally:
        proc.terminate()
        proc.wait(20)


def test_get_stats_summarises_both_tiers(both_tiers_used):
    stats = both_tiers_used.client.stats()
    tiers = {t.tier: t for t in stats.tiers}
    assert stats.completed_generations >= 4 and 0 < stats.large_share < 1
    for t in tiers.values():
        assert t.requests >= 2 and t.mean_latency_ms > 0 and t.p95_latency_ms >= t.mean_ttft_ms > 0
        assert t.tokens_per_second > 0 and t.engine_load_seconds > 1 and t.ready
    assert stats.uptime_seconds > 10 and stats.requests_by_code["OK"] >= 4
    assert f"{stats.large_share:.0%} above the cheapest tier" in stats.summary
    assert all(f"\n{name} SmolLM2-135M-Instruct: {tiers[t].requests} (" in stats.summary
               for name, t in (("small", 1), ("large", 2)))


def test_load_generator_short_run(live, tmp_path):
    import sys

    out = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "clients.cli", "--address", live.address, "bench", "--concurrency", "1,3",
         "--requests", "6", "--stream", "--max-tokens", "8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["levels"]) == {"1", "3"}
    for level in report["levels"].values():
        assert level["requests"] == 6 and level["ok"] == 6 and level["codes"] == {"OK": 6}
        assert level["rps"] > 0 and level["tokens_per_s"] > 0
        for tier in level["tiers"].values():
            assert {"count", "rps", "ttft_ms", "inter_token_ms", "e2e_ms", "tokens_per_s"} <= set(tier)
            assert tier["e2e_ms"]["p50"] <= tier["e2e_ms"]["p99"]
    for png in report["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_savings_equal_a_hand_computation_from_the_token_counts(live):
    """Each answer's cost is its tokens at its tier's prices (config/cpu.yaml),
    beside the same tokens at the most capable tier's; a cache hit costs
    nothing. GetStats, /metrics and the HTTP answer agree."""
    from server.config import load

    prices = {name: t.cost for name, t in load(ROOT / "config/cpu.yaml").tiers.items()}

    def by_hand(tier, usage):
        return (usage.prompt_tokens * prices[tier].prompt_per_1k + usage.completion_tokens * prices[tier].completion_per_1k) / 1000

    client = live.client
    before = client.stats()
    small = client.generate("Name a colour.", route="small", max_tokens=8, cache="off")
    large = client.generate("Name a colour.", route="large", max_tokens=8, cache="off")
    client.generate("Name a yellow fruit.", route="small", max_tokens=8)
    hit = client.generate("Name a yellow fruit.", route="small", max_tokens=8)
    assert hit.cache.status == 2  # CACHE_EXACT
    assert small.usage.cost == pytest.approx(by_hand("small", small.usage)) and small.usage.cost > 0
    assert small.usage.cost_if_most_capable == pytest.approx(by_hand("large", small.usage))
    assert large.usage.cost == pytest.approx(large.usage.cost_if_most_capable) == pytest.approx(by_hand("large", large.usage))
    assert (hit.usage.cost, hit.usage.cost_if_most_capable) == (0.0, pytest.approx(by_hand("large", hit.usage)))
    after = client.stats()
    spent = small.usage.cost + large.usage.cost + by_hand("small", hit.usage)  # the first "yellow fruit" answer, then the hit
    would = by_hand("large", small.usage) + by_hand("large", large.usage) + 2 * by_hand("large", hit.usage)
    assert after.cost - before.cost == pytest.approx(spent)
    assert after.cost_if_most_capable - before.cost_if_most_capable == pytest.approx(would)
    assert after.saved_share == pytest.approx(1 - after.cost / after.cost_if_most_capable)
    assert "saved" in after.summary
    metered = sum(live.metric_value("router_cost_total", tier=t) for t in ("small", "large"))
    assert metered == pytest.approx(after.cost)
    assert live.metric_value("router_cost_if_most_capable_total") == pytest.approx(after.cost_if_most_capable)
    body = json.dumps({"model": "small", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{live.http_port}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.loads(r.read())
    u, triage = answer["usage"], answer["triage"]
    cost = (u["prompt_tokens"] * prices["small"].prompt_per_1k + u["completion_tokens"] * prices["small"].completion_per_1k) / 1000
    if triage["cache"] in ("EXACT", "SEMANTIC"):
        cost = 0.0
    assert triage["cost"] == pytest.approx(cost) and triage["saved_share"] == pytest.approx(1 - cost / triage["cost_if_most_capable"])
