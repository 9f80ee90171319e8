"""`make bench`'s report: docs/benchmarks.md written from the results."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path



from .caches import overlap_lines
from .overhead import http_lines
from .spill import spill_lines


# ---- report ----------------------------------------------------------------------

def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform()}


def _sections_note(results: dict) -> str:
    dates = results.get("section_dates")
    if not dates:
        return "all in one run"
    legacy = {"1-4": "classify, overhead, batching, adaptive", "5": "caches"}  # how earlier reports named them
    when = "; ".join(f"{legacy.get(k, k)} on {v}" for k, v in sorted(dates.items(), key=lambda kv: kv[1]))
    return (f"sections re-measured separately with `python -m benchmarks --only SECTION` ({when}; "
            "each section's comparisons are side by side within its run)")


def _in_router_line(r: dict) -> str:
    one, two = r["threads_1"], r["threads_2"]
    return (f"- Inside the running router ({r['entries']:,} entries, one caller, idle engines, {r['requests_per_setting']} misses per setting, "
            f"alternating blocks), `timings.cache_ms` with one embedding thread: p50 **{one['lookup_p50_ms']:.1f} ms**, p99 "
            f"**{one['lookup_p99_ms']:.1f} ms** (TTFT p50 {one['ttft_p50_ms']:.0f} ms); with two: p50 {two['lookup_p50_ms']:.1f} ms, "
            f"p99 {two['lookup_p99_ms']:.1f} ms (TTFT p50 {two['ttft_p50_ms']:.0f} ms). This adds the hop to the embedding thread "
            "and shares the process with gRPC and the engines' clients; vLLM pins both CPU engines to core 0 and leaves core 1 to the router.")


def _added(o: dict, q: int, digits: int = 1) -> str:
    """An added TTFT percentile, with its bootstrap interval when the run recorded one."""
    text = f"{o[f'added_ttft_p{q}_ms']:+.{digits}f} ms"
    ci = o.get(f"added_ttft_p{q}_ci_ms")
    return text + (f" (95 % interval {ci[0]:+.{digits}f} to {ci[1]:+.{digits}f})" if ci else "")


def _classify_ratio_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.classify_handler --ratios` (its own run)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    return [f"Where the gap to the ceiling is (`python -m benchmarks.classify_handler --ratios`, {r['date']}, {r['concurrency']} callers, "
            f"{r['rounds']} alternating rounds per row, each row its own server): Classify's rate against Health/Check with the handler "
            "cut down step by step.", "",
            "| Classify handler | Classify req/s | Health/Check req/s | ratio |", "|---|---|---|---|",
            *[f"| {v['variant']} | {v['classify_rps']:.0f} | {v['health_rps']:.0f} | {v['ratio']:.3f} |" for v in r["rows"]], ""]


def _own_text(o: dict) -> str:
    """The per-request time outside the engine's own time to first token, when the run recorded it."""
    if "own_p99_ms" not in o:
        return ""
    p50, p99 = o["own_p50_ms"], o["own_p99_ms"]
    if p99["direct"] == 0:  # a remote front: all of the direct path's TTFT is the server's
        return (f"; per request, the router path's time outside its own wait on the server (the direct path has none): "
                f"**p50 {p50['router']:.2f} ms, p99 {p99['router']:.2f} ms**")
    return (f"; outside the engine's own time to first token, per request: router path p50 {p50['router']:.2f} / p99 {p99['router']:.2f} ms, "
            f"direct path p50 {p50['direct']:.2f} / p99 {p99['direct']:.2f} ms, so the router adds **p50 {o['added_own_p50_ms']:+.2f} ms, "
            f"p99 {o['added_own_p99_ms']:+.2f} ms**")


def _overhead_lines(levels: dict) -> list[str]:
    if "router" in levels:  # a report from before levels: one level, 4
        levels = {str(levels["setup"]["concurrency"]): levels}
    gc_full = levels.get("full_collection_ms")
    levels = {c: o for c, o in levels.items() if c != "full_collection_ms"}
    lines = ["## 2. Router overhead (streaming, same engine, interleaved rounds)", "",
             "| concurrency | path | requests | tokens/s | TTFT p50 ms | TTFT p99 ms |", "|---|---|---|---|---|---|"]
    for c, o in levels.items():
        lines += [f"| {c} | {k} | {o[k]['requests']} | {o[k]['tokens_per_s']:.1f} | {o[k]['ttft_p50_ms']:.1f} | {o[k]['ttft_p99_ms']:.1f} |"
                  for k in ("router", "direct")]
    lines.append("")
    for c, o in levels.items():
        lag = o.get("loop_lag")
        lag_text = (f"; the event loop ran {lag['ticks']:.0f} lag ticks, {lag['share_over_5ms']:.1%} of them over 5 ms late, "
                    f"99th percentile within {lag['p99_bucket_s'] * 1e3:g} ms") if lag else ""
        gc_text = ""
        if o.get("gc"):
            gc_text = (f"; {o['gc']['collections']:.0f} garbage collections took {o['gc']['seconds'] * 1e3:.0f} ms in all, the longest "
                       f"within {o['gc']['max_bucket_s'] * 1e3:g} ms")
        lines.append(f"- Concurrency {c}: throughput ratio router/direct **{o['throughput_ratio']:.3f}** (target ≥ 0.95); added TTFT p50 "
                     f"**{_added(o, 50)}**, p99 **{_added(o, 99)}** (target: p99 under 5 ms){_own_text(o)}{lag_text}{gc_text}.")
    if any("own_p99_ms" in o for o in levels.values()):
        lines.append("- How to read these: the end-to-end percentiles compare two sets of requests, each meeting the engine's batches its "
                     "own way, so at p99 their 95 % intervals span tens of milliseconds and cannot resolve a few. The per-request figure "
                     "subtracts each request's own engine time to first token (the router reports it as `ttft_ms - routing_ms`; the "
                     "direct path times it around `engine.generate`), leaving what the path itself added: on the router path the gRPC "
                     "hop both ways, validation, classification, cache and render; on the direct path the render.")
    if gc_full:
        lines.append(f"- A full garbage collection in the server's process, measured in the same run: {gc_full['unfrozen']:.1f} ms with "
                     f"everything on the heap collectable (as before 2026-11-26), {gc_full['frozen']:.1f} ms with the "
                     f"{gc_full['tracked_objects_frozen']:,} objects alive after start-up frozen (`server/observe/stalls.py`, as the server now runs).")
    any_level = next(iter(levels.values()))
    auto = Path(__file__).resolve().parents[1] / "docs/overhead-auto-cores.json"
    if auto.is_file():  # the same section with vLLM's default binding, for where the added time comes from
        a = json.loads(auto.read_text())
        lines += ["", f"The same section with both engines on core 0 (vLLM's `auto`, {a['date']}; `python -m benchmarks --only overhead "
                  "--config CONFIG` with `cpu_cores: auto`, results in docs/overhead-auto-cores.json):"]
        lines += [f"- Concurrency {c}: ratio {o['throughput_ratio']:.3f}; added TTFT p50 {o['added_ttft_p50_ms']:+.1f} ms, p99 "
                  f"{o['added_ttft_p99_ms']:+.1f} ms; loop lag over 5 ms in {o['loop_lag']['share_over_5ms']:.1%} of ticks."
                  for c, o in a["overhead"].items() if c != "full_collection_ms"]
    client = any_level["setup"].get("client", "the server's process and event loop")
    lines += ["", f"{any_level['setup']['max_tokens']} new tokens, greedy. The router path's gRPC client runs in {client}; the direct "
              "path calls the same in-process engine (render, generate) from the benchmark's event loop.", ""]
    return lines


def _engine_spin_lines(path: Path) -> list[str]:
    """The CPU engine's second process, spinning and quiet (benchmarks.engine_spin)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    spin, quiet, ratio = r["spinning"], r["quiet"], r["ratios_quiet_over_spinning"]

    def row(name: str, v: dict, ratios: bool = False) -> str:
        busy, both = v["one_tier_busy"], v["both_tiers_busy_tokens_per_s"]
        one = f"{busy['tokens_per_s']:.1f}" + (f" (×{ratio['one_tier_tokens_per_s']:.2f})" if ratios else "")
        two = f"{both['small']:.1f} / {both['large']:.1f}" + (
            f" (×{ratio['both_small_tokens_per_s']:.2f} / ×{ratio['both_large_tokens_per_s']:.2f})" if ratios else "")
        return f"| {name} | {busy['cores']['EngineCore']:.2f} | {busy['cores']['Worker']:.2f} | {one} | {two} |"

    scrapes = [v["scraping"] for v in (spin, quiet)]
    return [
        "**The engine's second process no longer spins.** On the CPU build vLLM splits each engine into an EngineCore and a "
        "Worker process (its CPU platform forces the multiprocessing executor), and the reader of their shared-memory queues "
        "spins on sched_yield for 1 s after every message. So while one tier generated, its EngineCore held a second core. "
        "Triage's vLLM plugin (`server/tiers/engine.py`, `quiet_message_queues`) makes that reader sleep 0.2 ms between looks "
        "instead. `python -m benchmarks.engine_spin` (docs/engine_spin.json, the router on config/cpu.yaml with vLLM's spinning "
        "readers kept by `TRIAGE_VLLM_SPIN=1`, then without, 200 tokens):", "",
        "| | EngineCore cores, one tier busy | Worker cores | one tier tokens/s | both busy, small / large tokens/s |",
        "|---|---|---|---|---|",
        row("vLLM's spinning readers", spin), row("quiet readers (default now)", quiet, ratios=True), "",
        f"Scraping `/metrics` ten times a second during a small-tier answer cost nothing measurable on this profile: "
        f"{scrapes[0]['series']} series, a scrape p50 {min(x['scrape_ms_p50'] for x in scrapes):.0f}-"
        f"{max(x['scrape_ms_p50'] for x in scrapes):.0f} ms and at most {max(x['scrape_ms_max'] for x in scrapes):.0f} ms, the answer "
        f"{min(x['answer_s_scraped'] for x in scrapes):.1f}-{max(x['answer_s_scraped'] for x in scrapes):.1f} s scraped against "
        f"{min(x['answer_s_alone'] for x in scrapes):.1f}-{max(x['answer_s_alone'] for x in scrapes):.1f} s alone.", ""]


def _cores_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.cores` (its own run, its own date)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    s = r["setup"]
    lines = ["## 7. Cores: where the CPU engines compute (`tiers.*.cpu_cores`)", "",
             f"Measured {r['date']} by `python -m benchmarks.cores` ({r['rounds']} rounds, settings in alternating order, engines "
             f"started afresh for each): streaming, {s['max_tokens']} new tokens, {s['requests_per_caller']} requests per caller; "
             f"mixed = {s['per_tier_callers']} callers on each tier, one tier = {2 * s['per_tier_callers']} callers on the small tier.", "",
             "| setting (small, large) | mixed tokens/s | × auto | mixed TTFT p50 ms | one tier tokens/s | × auto | one tier TTFT p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["settings"].items():
        m, o = v["mixed"], v["one_tier"]
        lines.append(f"| {name}: {v['cores'][0]}, {v['cores'][1]} | {m['tokens_per_s']:.1f} | {m['tokens_per_s_vs_auto']:.2f} | "
                     f"{m['ttft_p50_ms']:.0f} | {o['tokens_per_s']:.1f} | {o['tokens_per_s_vs_auto']:.2f} | {o['ttft_p50_ms']:.0f} |")
    return lines + [""]


def _remote_lines(path: Path) -> list[str]:
    """From `python -m benchmarks.remote` (its own run, its own date)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    lines = ["## 8. A light front: both tiers remote, against the same `vllm serve` called directly", "",
             f"Measured {r['date']} by `python -m benchmarks.remote`: the router in its own process with both tiers on one "
             "`vllm serve` (SmolLM2, CPU build) and the semantic cache off; direct = `/v1/chat/completions` on the same server with "
             f"the same messages; streaming, greedy, alternating blocks. Router resident memory once SERVING and idle: "
             f"**{r['router_idle_rss_mb']:.0f} MB** (target: under 350 MB); torch, transformers or vLLM mapped into it: "
             f"{', '.join(r['router_imports']) or 'none'}.", "",
             "| concurrency | router TTFT p50 / p99 ms | direct TTFT p50 / p99 ms | added p50 / p99 ms | throughput ratio |", "|---|---|---|---|---|"]
    for c, v in r["levels"].items():
        lines.append(f"| {c} | {v['router']['ttft_p50_ms']:.1f} / {v['router']['ttft_p99_ms']:.1f} | {v['direct']['ttft_p50_ms']:.1f} / "
                     f"{v['direct']['ttft_p99_ms']:.1f} | {_added(v, 50, 2)} / {_added(v, 99, 2)} | {v['throughput_ratio']:.3f} |")
    lines += [""] + [f"- Concurrency {c}{_own_text(v)}." for c, v in r["levels"].items() if "own_p99_ms" in v]
    instant = path.parent / "remote-instant.json"
    if instant.is_file():
        i = json.loads(instant.read_text())
        lines += ["", f"The same run against an upstream that answers at once (`python -m benchmarks.remote --instant-upstream`, {i['date']}): "
                  "no engine time, and no engine process competing for the cores, so this is the router's own cost on the remote path."]
        lines += [f"- Concurrency {c}: {v['router']['tokens_per_s']:,.0f} tokens/s through the router against {v['direct']['tokens_per_s']:,.0f} "
                  f"direct (ratio {v['throughput_ratio']:.2f}); router TTFT p50 {v['router']['ttft_p50_ms']:.2f} ms against direct "
                  f"{v['direct']['ttft_p50_ms']:.2f} ms, added {_added(v, 50, 2)}; p99 added {_added(v, 99, 2)}{_own_text(v)}."
                  for c, v in i["levels"].items()]
    any_level = next(iter(r["levels"].values()))
    lines += ["", f"{any_level['router']['requests']} requests per path at one caller. The intervals are 95 % bootstrap intervals of the "
              "difference: how far the samples alone could move it. The direct path is read with aiohttp, the router's own upstream "
              "client (`python -m benchmarks.upstream_client`: the first event of a stream 1.1 ms sooner than with httpx)."]
    return lines + [""]


def _smg_lines(path: Path) -> list[str]:
    """Section 10, from `python -m benchmarks.smg` (its own command: it starts a worker and a gateway)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    rows = [f"| {c} | {v['direct']['ttft_p50_ms']:.1f} | {v['gateway']['ttft_p50_ms']:.1f} | {v['added_ttft_p50_ms']:+.1f} | "
            f"{v['direct']['ttft_p99_ms']:.1f} | {v['gateway']['ttft_p99_ms']:.1f} | {v['added_ttft_p99_ms']:+.1f} |" for c, v in r["levels"].items()]
    return ["## 10. The SMG path against its worker called directly", "",
            f"Measured {r['date']} with `python -m benchmarks.smg`: one vLLM gRPC CPU worker (core 1) behind SMG 1.13.0; the same "
            f"questions, {r['max_tokens']} new tokens, streamed, through SMG's chat completions (what a `backend: smg` tier sends) and "
            f"straight to the worker's gRPC `Generate` from token ids rendered in the caller, in {r['rounds']} alternating rounds of "
            f"{r['per_block']} per path.", "",
            "| concurrency | direct TTFT p50 ms | through SMG p50 ms | added p50 | direct p99 | through SMG p99 | added p99 |",
            "|---|---|---|---|---|---|---|", *rows, ""]


# Section 12's runs, each its own command and result file (make bench runs them all).
GPU_PACE_RUNS = (
    ("gpu_pace.json", "A token an event, all streams of a block starting together"),
    ("gpu_pace_interval4.json", "Four tokens an event (`stream_interval: 4` on the router's tiers; direct clients ask the simulator "
                                "for the same), all streams starting together"),
    ("gpu_pace_spread.json", "A token an event, each stream starting at its own moment within one answer's time"),
    ("gpu_pace_spread_interval4.json", "Four tokens an event, each stream starting at its own moment"),
    ("gpu_pace_litellm.json", "Beside LiteLLM's proxy"),
)


def _gpu_pace_command(r: dict, name: str) -> str:
    options = [f"--against {r['against']}" if r.get("against") else "", f"--stream-interval {r['stream_interval']}" if r.get("stream_interval", 1) > 1 else "",
               "--arrivals spread" if r.get("arrivals") == "spread" else "", f"--workers {r['workers']}" if r.get("workers", 1) > 1 else "",
               f"--levels {','.join(r['levels'])}" if list(r["levels"]) != ["32", "128", "256", "512"] else "",
               f"--rounds {r['rounds']}" if r.get("rounds", 3) != 3 else "",
               "--litellm .venv-litellm/bin/litellm" if any("litellm" in level for level in r["levels"].values()) else "",
               f"--name {name}" if name != "gpu_pace.json" else ""]
    return " ".join(["python -m benchmarks.gpu_pace", *filter(None, options)])


def _messages(path_result: dict) -> str:
    """Messages with text an answer; runs before it was counted show none."""
    value = path_result.get("messages_per_answer")
    return "-" if value is None else f"{value:.1f}"


def _gpu_pace_table(r: dict) -> list[str]:
    against = r.get("against")
    names = {"grpc": "gRPC front", "http": "HTTP front", "grpc_old": f"gRPC front at {against}", "http_old": f"HTTP front at {against}",
             "litellm": "LiteLLM proxy (1 worker)", f"grpc_w{r.get('workers')}": f"gRPC front, {r.get('workers')} workers",
             f"http_w{r.get('workers')}": f"HTTP front, {r.get('workers')} workers"}
    rows = []
    for streams, level in r["levels"].items():
        d = level["direct"]
        rows.append(f"| {streams} | direct | {d['tokens_per_s']:,.0f} tokens/s (model: {d['model_tokens_per_s']:,.0f}) | "
                    f"{d['ttft_p50_ms']:.0f} / {d['ttft_p99_ms']:.0f} ms | {d['gap_p99_ms']:.0f} ms | simulator {d['sim_cores']:.2f} | - | "
                    f"{_messages(d)} |")
        for path_name, v in level.items():
            if path_name != "direct":
                rows.append(f"| {streams} | {names.get(path_name, path_name)} | ×{v['throughput_ratio']:.3f} | {v['added_ttft_p50_ms']:+.0f} / "
                            f"{v['added_ttft_p99_ms']:+.0f} ms | {v['added_gap_p99_ms']:+.1f} ms | {v['router_cores']:.2f} | "
                            f"{v['router_cpu_ms_per_1k_tokens']:.0f} | {_messages(v)} |")
    return ["| streams | path | tokens/s vs direct | TTFT p50 / p99 (added) | gap p99 (added) | cores | CPU ms per 1,000 tokens | "
            "messages an answer |",
            "|---|---|---|---|---|---|---|---|", *rows, ""]


def _first_token_lines(path: Path) -> list[str]:
    """Where a first token goes, hop by hop (benchmarks.first_token), at one caller or in a burst."""
    from .first_token import LEGS

    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    m = r["ms_median"]
    burst = r.get("burst", 1)
    direct = m["direct"]
    rows = [f"| direct | {direct['client -> server']:.2f} | - | - | {direct['server']:.2f} | - | {direct['server -> client']:.2f} | "
            f"{direct['total']:.2f} | - |"]
    for name, key in (("HTTP front", "http"), ("gRPC front", "grpc")):
        v = m[key]
        rows.append(f"| {name} | " + " | ".join(f"{v[h]:.2f}" for h in LEGS) + f" | {v['total']:.2f} | {v['total'] - direct['total']:+.2f} |")
    if burst > 1:
        title = (f"**Where a burst's first tokens go**, {r['date']}, `python -m benchmarks.first_token --burst {burst} --requests "
                 f"{r.get('rounds', m['http']['requests'] // burst + 1)}` (docs/{path.name}): {burst} questions sent at once from one client process, "
                 "directly and through each front in turn, every process stamping the same clock; medians in ms over "
                 f"{m['http']['requests']} requests a path. Client -> router holds the client's own work on its {burst} calls and "
                 "the router's accepting of the calls before each. Each leg's median is taken on its own, so in a burst the legs need not "
                 "add up to the total, and a leg of under a millisecond can come out a little below zero (stamps of different "
                 "processes).")
    else:
        title = (f"**Where one caller's first token goes**, {r['date']}, `python -m benchmarks.first_token` (docs/{path.name}): one "
                 "question at a time, directly and through each front in turn, every process stamping the same clock; medians in ms "
                 f"over {m['http']['requests']} requests a path.")
    return [f"{title} Direct has one hop each way (client -> server, server -> client).", "",
            "| path | client -> router | router's work | router -> server | server (prefill) | server -> router | router -> client | total | added |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def _stream_floor_line(path: Path) -> list[str]:
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    us = r["us_per_message"]
    return [f"What no router code can remove here: `python -m benchmarks.stream_floor` ({r['date']}, docs/stream_floor.json) streams "
            f"fixed messages with no router code to {r['streams']} streams, one per {r['step_ms']:g} ms step: grpc.aio spent "
            f"{us['grpc.aio']:.0f} µs and an aiohttp event stream {us['aiohttp SSE']:.0f} µs of server CPU per message, that is "
            f"{us['grpc.aio']:.0f} and {us['aiohttp SSE']:.0f} ms per 1,000 tokens at a token a message before the router does anything.", ""]


GPU_PACE_READING = [
    "How to read them:", "",
    "- Only figures of one run compare: these machines are noisy, and a run measures the 2 shared cores as much as the router "
    "(the simulator, the router and the load processes share them).",
    "- **All streams starting together** is a burst of that many new requests in one moment. grpc.aio accepts one call at "
    "a time, each in a turn of the router's one event loop, and each new request costs the router about half a millisecond "
    "of its own work (validation, classification, rendering, the upstream request) besides the call's own set-up, so the "
    "last of 256 starts some hundreds of milliseconds late: that is the first-token p99. Every token relayed meanwhile for "
    "the streams already running takes a turn of the same loop; while the loop is saturated the streams merge their text "
    "(`server.busy_merge_ms`, docs/deployment.md; the messages-an-answer column), which leaves the loop to the new requests. "
    "The burst's hop-by-hop table below shows where the rest waits.",
    "- **Each stream starting at its own moment** is a busy server's steady state: what the router adds to a first token "
    "is then its own work and its two extra hops (the hop-by-hop table below), unless its process or the machine is "
    "saturated (then requests queue on the event loop, as the gRPC front's tails at 256 and 512 streams of a token an "
    "event show). CPU per 1,000 tokens comes out higher than in a burst; a block then also holds a ramp up and down "
    "with fewer streams running. The cause was not pinned down further.",
    "- **`stream_interval: 4`** roughly halves the router's CPU per token: four times fewer messages on both hops, and the "
    "per-request cost unchanged. First tokens are not delayed by it: the first text goes alone.",
    "- At 512 streams the simulator runs 256 and queues the rest, as vLLM does, so direct's first tokens wait in that queue; "
    "a router path that delivers its streams more slowly feeds that queue more slowly too, which is how a first-token time "
    "can come out below direct's.",
    "- Two workers (`server.workers: 2`) brought nothing here (2026-12-02 12:28 UTC run, in git history): the router never "
    "used more than half a core, the simulator and the load processes sharing the same 2 cores; what workers are for, a "
    "router saturating its core, cannot be shown on this machine.", "",
]


def _gpu_pace_lines(folder: Path) -> list[str]:
    """Section 12, from `python -m benchmarks.gpu_pace` runs (a simulator, routers and LiteLLM's proxy), benchmarks.first_token
    and benchmarks.stream_floor."""
    runs = [(name, title, json.loads((folder / name).read_text())) for name, title in GPU_PACE_RUNS if (folder / name).is_file()]
    if not runs:
        return []
    r = runs[0][2]
    pace = r["pace"]
    lines = ["## 12. At a GPU's pace: hundreds of streams against a simulated H200", "",
             f"`python -m benchmarks.gpu_pace` on {r['cores']} cores: benchmarks/simulated_vllm.py in its own process (continuous "
             f"batching of at most {pace['max_num_seqs']} requests; prefill {pace['prefill_s'] * 1e3:g} ms + "
             f"{pace['prefill_per_token_s'] * 1e3:g} ms a prompt token, a chat's prompt counted as its template renders it; a step "
             f"{pace['step_s'] * 1e3:g} ms + {pace['step_per_seq_s'] * 1e3:g} ms a running request; one server-sent event per token "
             "unless a request asks for vLLM's `stream_interval`), the router in its own process with both tiers `remote` on it and "
             f"the caches off, {r['load_procs']} load processes with {r.get('grpc_connections_per_load_proc', 8)} gRPC connections each; "
             f"every stream asks {r['requests_per_stream']} questions of {r['max_tokens']} tokens one after the other; alternating "
             "blocks of every path. Added = the path's figure less direct's; CPU = the process's user + system time over the block "
             "(the router's, summed over its workers, or the proxy's), per 1,000 streamed tokens. `--against REV` runs the router "
             "code of an earlier commit beside this one.", ""]
    for name, title, result in runs:
        lines += [f"**{title}**, {result['date']}, `{_gpu_pace_command(result, name)}` (docs/{name}):", "", *_gpu_pace_table(result)]
    return [*lines, *_first_token_lines(folder / "first_token.json"), *_first_token_lines(folder / "first_token_burst256.json"),
            *_stream_floor_line(folder / "stream_floor.json"), *GPU_PACE_READING]


def write_markdown(results: dict, path: Path) -> None:
    m, c, o, b, a = results["machine"], results["classify"], results["overhead"], results["batching"], results["adaptive"]
    lines = [
        "# Benchmarks", "",
        f"Measured {results['date']} by `make bench` (`python -m benchmarks --config {results['config']}`), "
        f"{_sections_note(results)} on {m['cores']} cores ({m['cpu']}), profile `{results['profile']}`: both tiers serve "
        "SmolLM2-135M-Instruct on vLLM's CPU build (the tiers differ only in budgets, see config/cpu.yaml). "
        "Machines here are noisy: compare the ratios, which were measured side by side; absolute numbers move run to run.", "",
        "Raw numbers: `docs/benchmarks.json`.", "",
        "## 1. Classify RPC (client in a separate process)", "",
        "| concurrency | Classify req/s | p50 ms | p99 ms | Health.Check req/s (ceiling) | Check p99 ms | Classify / ceiling |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['health_ceiling']['rps']:.0f} | "
          f"{r['health_ceiling']['p99_ms']:.2f} | {r['ratio_to_ceiling']:.2f} |" for r in c],
        "", "Targets at 32 concurrent callers: at least 2,000 requests/s with p99 under 10 ms, and at least 0.90 of the ceiling. The ceiling column is "
        "`grpc.health.v1.Health/Check`, the cheapest RPC on the same server, measured the same way in the same run: "
        "what a Python grpc.aio server and client on these 2 cores cost before any router work. Each row is the median of "
        "alternating Classify and Health/Check blocks when the run recorded several (`ratios_by_round` in the JSON).", "",
        *_classify_ratio_lines(path.parent / "classify-ratios.json"),
        *_overhead_lines(o),
        "## 3. Continuous batching (small tier, streaming, 64 new tokens)", "",
        "| concurrency | generated tokens/s | × concurrency 1 |", "|---|---|---|",
        *[f"| {k} | {v['tokens_per_s']:.1f} | {v['scaling_vs_c1']:.2f} |" for k, v in b.items()], "",
        "## 4. Adaptive routing against always-large (built-in mix, tier default budgets, concurrency 4)", "",
        "| policy | requests | mean ms | p95 ms | share routed small | tokens |", "|---|---|---|---|---|---|",
        *[f"| {k} | {a[k]['requests']} | {a[k]['mean_ms']:.0f} | {a[k]['p95_ms']:.0f} | {a[k]['small_share']:.0%} | {a[k]['tokens']} |" for k in ("adaptive", "always_large")],
        "",
        f"Adaptive/always-large: mean latency ×{a['mean_latency_ratio']:.2f}, p95 ×{a['p95_latency_ratio']:.2f}. On this CPU "
        "profile both tiers run the same model on the same two cores: routing can only save the large tier's bigger token "
        "budget (max_tokens 256 vs 128), and splitting concurrent requests across two engines costs batching, which is "
        "why adaptive need not win here. The comparison that matters is the GPU profile, where the small tier is a 5× "
        "smaller model; it cannot be measured on these machines.", "",
        "## 5. Caches", "",
        f"- Exact hit through gRPC (`Generate`, one caller in a separate process, {results['cache_exact']['requests']} requests): "
        f"p50 **{results['cache_exact']['hit']['p50_ms']:.2f} ms**, p99 **{results['cache_exact']['hit']['p99_ms']:.2f} ms** (target: p99 under 2 ms); "
        f"interleaved on the same channel, `Health/Check` took p50 {results['cache_exact']['health']['p50_ms']:.2f} ms, "
        f"p99 {results['cache_exact']['health']['p99_ms']:.2f} ms (the cost of any unary RPC here). "
        f"The miss that filled it took {results['cache_exact']['miss_ms']:.0f} ms.",
        f"- Semantic lookup with {results['cache_semantic']['entries']:,} entries (embed the question with all-MiniLM-L6-v2 in ONNX Runtime on one "
        f"thread; candidates from 48-byte sign codes in a faiss IndexBinaryFlat, rescored exactly on float16 vectors; guards), {results['cache_semantic']['queries']} questions: p50 "
        f"**{results['cache_semantic']['lookup_p50_ms']:.1f} ms**, p99 **{results['cache_semantic']['lookup_p99_ms']:.1f} ms** "
        f"(target: p99 under 15 ms); of which embedding p50 {results['cache_semantic']['embed_p50_ms']:.1f} / p99 "
        f"{results['cache_semantic']['embed_p99_ms']:.1f} ms (ONNX Runtime: median {results['cache_semantic']['embed_short_p50_ms']:.1f} ms for the "
        f"{results['cache_semantic']['short_questions']} questions of at most {results['cache_semantic']['length_split_tokens']} tokens, "
        f"{results['cache_semantic']['embed_long_p50_ms']:.1f} ms for the {results['cache_semantic']['long_questions']} longer ones, up to "
        f"{results['cache_semantic']['long_max_tokens']} tokens, so the p99 is the long questions; the same questions through PyTorch eager, "
        f"in alternating blocks: p50 {results['cache_semantic']['pytorch_embed_p50_ms']:.1f} / p99 {results['cache_semantic']['pytorch_embed_p99_ms']:.1f} ms) and search p50 {results['cache_semantic']['search_p50_ms']:.1f} / p99 "
        f"{results['cache_semantic']['search_p99_ms']:.1f} ms. Measured in one thread of a process with the engines stopped: the lookup itself. "
        f"ONNX Runtime's profiler, same questions: {results['cache_semantic']['matmul_share']:.0%} of the embedding's kernel time is matrix "
        f"products, which run at {results['cache_semantic']['matmul_gflops']:.0f} GFLOP/s on one core. Tokenising a question takes p50 "
        f"{results['cache_semantic']['tokenize_p50_ms']:.2f} ms with the `tokenizers` library, {results['cache_semantic']['transformers_tokenize_p50_ms']:.2f} ms "
        "through transformers' wrapper (what the embedder used before 2026-11-23).",
        _in_router_line(results["cache_in_router"]),
        f"- Memory per semantic entry ({results['cache_semantic']['answer_chars']}-character answers): "
        f"{results['cache_semantic']['rss_bytes_per_entry']:.0f} bytes of resident memory measured while filling "
        f"(the cache's own accounting says {results['cache_semantic']['accounted_bytes_per_entry']:.0f}: 768 for the float16 vector, 48 for its sign code, "
        "the answer text, and Python object overhead it does not count).",
        f"- Candidate recall: {results['cache_semantic']['recall']:.3f} of {results['cache_semantic']['recall_queries']} "
        f"paraphrase-like queries (cosine ≥ 0.951 to a stored real question, among {results['cache_semantic']['recall_among_real']:,} "
        f"real questions and the random rest) found their entry through the binary candidates.",
        f"- The same search done exhaustively over float32 vectors (`IndexFlatIP`, one thread), same entries and questions, "
        f"in alternating blocks: p50 {results['cache_semantic']['flat32_search_p50_ms']:.1f} / p99 {results['cache_semantic']['flat32_search_p99_ms']:.1f} ms; "
        f"the largest difference between its best similarity and the cache's was {results['cache_semantic']['fp16_max_similarity_error']:.5f}.", "",
        *(overlap_lines(results["overlap"]) if "overlap" in results else []),
        *_cores_lines(path.parent / "cores.json"),
        *_engine_spin_lines(path.parent / "engine_spin.json"),
        *_remote_lines(path.parent / "remote.json"),
        *spill_lines(results.get("spill"), results.get("section_dates", {}).get("spill", results["date"])),
        *_smg_lines(path.parent / "smg.json"),
        *http_lines(results.get("http"), results.get("section_dates", {}).get("http", results["date"])),
        *_gpu_pace_lines(path.parent),
        "Plots from the load generator: `triage bench --concurrency 1,4,16 --stream --out reports/bench` "
        "(latency per tier, throughput against concurrency).", "",
        "## Reproduce", "", "```sh", "make bench                      # sections 1-6, 8, 9 and 11, about 50 minutes on 2 cores",
        "python -m benchmarks --only overhead,overlap   # some sections, updating the report",
        "python -m benchmarks.cores      # section 7, about 15 minutes", "python -m benchmarks.remote     # section 8, about 12 minutes",
        "python -m benchmarks.classify_handler --ratios  # section 1's decomposition, about 2 minutes",
        "python -m benchmarks.upstream_client  # httpx against aiohttp as a tier's upstream client, seconds",
        "python -m benchmarks.smg        # section 10, about 4 minutes",
        "python -m benchmarks.gpu_pace --against REV  # section 12, a token an event, about 12 minutes",
        "python -m benchmarks.gpu_pace --against REV --stream-interval 4 --name gpu_pace_interval4.json  # four tokens an event",
        "python -m benchmarks.gpu_pace --against REV --arrivals spread --name gpu_pace_spread.json  # streams starting apart",
        "python -m benchmarks.gpu_pace --against REV --arrivals spread --stream-interval 4 --name gpu_pace_spread_interval4.json",
        "python -m benchmarks.gpu_pace --levels 32,128,256 --rounds 2 --litellm .venv-litellm/bin/litellm --name gpu_pace_litellm.json  # make litellm-env first",
        "python -m benchmarks.first_token  # section 12, a first token hop by hop, a minute",
        "python -m benchmarks.stream_floor --out docs  # a streamed message's cost to grpc.aio and aiohttp alone, a minute",
        "python -m benchmarks.shutdown   # stop time of an idle server", "```", "",
    ]
    path.write_text("\n".join(lines))
