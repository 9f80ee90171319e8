"""Config loading, request validation and the routing policy: pure code."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from server.config import ConfigError, SamplingDefaults, load
from server.errors import InvalidArgument
from server.routing.policy import RoutingPolicy
from server.types import question_text
from server.types import ChatMessage, SamplingRequest
from server.validation import check_messages, check_sampling, check_threshold, effective_sampling

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_profile_loads_with_honest_budgets():
    cfg = load(ROOT / "config/cpu.yaml")
    small, large = cfg.tiers["small"], cfg.tiers["large"]
    assert small.model == large.model == "SmolLM2-135M-Instruct"  # same model, said so
    assert small.max_model_len < large.max_model_len
    assert small.sampling.max_tokens_cap < large.sampling.max_tokens_cap
    assert Path(small.model_path).is_absolute()
    for tier in (small, large):
        assert tier.engine_args["dtype"] == "float32" and tier.engine_args["enforce_eager"] is True
    kv = small.engine_args["kv_cache_memory_bytes"] + large.engine_args["kv_cache_memory_bytes"]
    assert kv <= 2 * 1024**3  # both KV caches fit comfortably in CI's memory


def test_gpu_profile_builds_valid_vllm_engine_args():
    """A typo in a GPU option fails here, not on the GPU box."""
    from server.tiers.engine import build_engine_args

    cfg = load(ROOT / "config/gpu.yaml")
    assert cfg.tiers["small"].model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.tiers["large"].model == "Qwen/Qwen2.5-7B-Instruct"
    share = sum(t.engine_args["gpu_memory_utilization"] for t in cfg.tiers.values())
    assert share <= 0.9
    for tier in cfg.tiers.values():
        args = build_engine_args(tier)
        assert args.model == tier.model and args.max_model_len == tier.max_model_len
        for key, value in tier.engine_args.items():
            assert getattr(args, key) == value


def test_engine_arg_typo_is_an_error():
    import dataclasses

    from server.tiers.engine import build_engine_args

    tier = load(ROOT / "config/gpu.yaml").tiers["small"]
    bad = dataclasses.replace(tier, engine_args={**tier.engine_args, "gpu_memory_utilisation": 0.3})
    with pytest.raises(TypeError, match="gpu_memory_utilisation"):
        build_engine_args(bad)


def test_unknown_config_keys_are_errors(tmp_path):
    text = (ROOT / "config/cpu.yaml").read_text().replace("grace_seconds: 30", "grace_secs: 30")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="grace_secs"):
        load(path)


def test_cli_ports_override_the_file():
    cfg = load(ROOT / "config/cpu.yaml").with_ports(0, -1)
    assert cfg.server.port == 0 and cfg.server.metrics_port == -1


@pytest.mark.parametrize(
    "sampling, field",
    [
        (SamplingRequest(temperature=-0.1), "sampling.temperature"),
        (SamplingRequest(temperature=2.5), "sampling.temperature"),
        (SamplingRequest(temperature=math.nan), "sampling.temperature"),
        (SamplingRequest(top_p=0.0), "sampling.top_p"),
        (SamplingRequest(top_p=1.5), "sampling.top_p"),
        (SamplingRequest(max_tokens=0), "sampling.max_tokens"),
        (SamplingRequest(stop=tuple("abcdefghijklmnopq")), "sampling.stop"),
        (SamplingRequest(stop=("",)), "sampling.stop[0]"),
        (SamplingRequest(top_k=-5), "sampling.top_k"),
        (SamplingRequest(repetition_penalty=0.0), "sampling.repetition_penalty"),
    ],
)
def test_bad_sampling_names_the_field(sampling, field):
    with pytest.raises(InvalidArgument) as err:
        check_sampling(sampling)
    assert err.value.field == field


@pytest.mark.parametrize(
    "messages, field",
    [
        ((), "messages"),
        ((ChatMessage("user", "  "),), "messages[0].content"),
        ((ChatMessage("robot", "hi"),), "messages[0].role"),
        ((ChatMessage("system", "be brief"),), "messages"),
        ((ChatMessage("user", "x" * 101),), "messages[0].content"),
        ((ChatMessage("user", "x" * 80), ChatMessage("assistant", "y" * 80)), "messages"),
        (tuple(ChatMessage("user", "hi") for _ in range(5)), "messages"),
    ],
)
def test_bad_messages_name_the_field(messages, field):
    from server.config import LimitsConfig

    with pytest.raises(InvalidArgument) as err:
        check_messages(messages, LimitsConfig(max_messages=4, max_message_chars=100, max_total_chars=150))
    assert err.value.field == field


@pytest.mark.parametrize("threshold", [-0.01, 1.01, math.nan])
def test_bad_threshold(threshold):
    with pytest.raises(InvalidArgument, match="threshold"):
        check_threshold(threshold)


@pytest.mark.parametrize("temperature", [1e-45, 0.005])
def test_a_temperature_vllm_would_silently_raise_is_refused(temperature):
    with pytest.raises(InvalidArgument, match="sampling.temperature: must be 0 .greedy. or at least 0.01"):
        check_sampling(SamplingRequest(temperature=temperature))
    check_sampling(SamplingRequest(temperature=0.0))
    check_sampling(SamplingRequest(temperature=0.01))


def test_effective_sampling_request_wins_defaults_fill_caps_hold():
    d = SamplingDefaults(max_tokens=64, max_tokens_cap=128, stop=("<end>",))
    s = effective_sampling(SamplingRequest(), d, "small")
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop) == (0.0, 1.0, 0, 64, ("<end>",))
    s = effective_sampling(SamplingRequest(temperature=0.7, max_tokens=100, stop=("\n\n",), seed=3), d, "small")
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (pytest.approx(0.7), 100, ("\n\n", "<end>"), 3)
    with pytest.raises(InvalidArgument, match="at most 128"):
        effective_sampling(SamplingRequest(max_tokens=129), d, "small")


MODELS = [("small", "S"), ("large", "L")]


def test_policy_threshold_override_and_route():
    policy = RoutingPolicy(lambda texts: [0.4], (0.5,), MODELS)
    msgs = (ChatMessage("user", "q"),)
    d, ms = policy.decide(msgs)
    assert (d.tier, d.model, d.reason, d.degraded) == ("small", "S", "classifier", False) and ms >= 0
    assert policy.decide(msgs, threshold=0.3)[0].tier == "large"
    d, _ = policy.decide(msgs, route="large")
    assert (d.tier, d.reason, d.p_complex) == ("large", "override", pytest.approx(0.4))


def test_policy_classifier_failure_degrades_to_large():
    failures = []

    def broken(texts):
        raise RuntimeError("boom")

    policy = RoutingPolicy(broken, (0.5,), MODELS, on_degraded=lambda: failures.append(1))
    d, _ = policy.decide((ChatMessage("user", "q"),))
    assert (d.tier, d.reason, d.degraded) == ("large", "fallback", True) and failures == [1]


THREE = [("small", "S"), ("medium", "M"), ("large", "L")]


@pytest.mark.parametrize(
    "p, tier, cut",
    [(0.0, "small", 0.3), (0.29, "small", 0.3), (0.3, "medium", 0.3), (0.69, "medium", 0.3), (0.7, "large", 0.7), (1.0, "large", 0.7)],
)
def test_three_tiers_split_the_score_at_ascending_cut_points(p, tier, cut):
    policy = RoutingPolicy(lambda texts: [p], (0.3, 0.7), THREE)
    d, _ = policy.decide((ChatMessage("user", "q"),))
    assert (d.tier, d.model, d.threshold, d.reason) == (tier, dict(THREE)[tier], cut, "classifier")


def test_three_tiers_a_request_threshold_moves_the_top_cut_and_never_inverts_the_order():
    policy = RoutingPolicy(lambda texts: [0.5], (0.3, 0.7), THREE)
    msgs = (ChatMessage("user", "q"),)
    assert policy.decide(msgs, threshold=0.4)[0].tier == "large"
    assert policy.cuts_for(0.2) == (0.2, 0.2)  # the lower cut follows it down
    assert policy.decide(msgs, threshold=0.2)[0].tier == "large"
    assert policy.decide(msgs, threshold=0.9)[0].tier == "medium"
    assert policy.decide(msgs, route="medium")[0].reason == "override"
    d, _ = RoutingPolicy(lambda texts: [float("nan")], (0.3, 0.7), THREE).decide(msgs)
    assert (d.tier, d.degraded) == ("large", True)  # a classifier failure goes to the most capable tier
    with pytest.raises(ValueError, match="3 tiers need 2 cut points"):
        RoutingPolicy(lambda texts: [0.5], (0.5,), THREE)


def test_a_third_tier_is_configuration(tmp_path):
    cfg = load(ROOT / "config/cpu-3tier.yaml")
    assert list(cfg.tiers) == ["small", "medium", "large"]
    assert cfg.classifier.cut_points == (0.3, 0.6)
    text = (ROOT / "config/cpu-3tier.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/")
    for replacement, message in (
        ("cut_points: [0.6, 0.3]", "ascend"),
        ("cut_points: [0.3]", "3 tiers need 2 cut points"),
        ("threshold: 0.5", "3 tiers need 2"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace("cut_points: [0.3, 0.6]", replacement))
        with pytest.raises(ConfigError, match=message):
            load(bad)


def test_tier_names_are_free_but_must_be_metric_labels(tmp_path):
    text = (ROOT / "config/cpu.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("\n  small:\n", "\n  Small Tier:\n"))
    with pytest.raises(ConfigError, match="lowercase"):
        load(bad)
    bad.write_text(text[: text.index("\n  large:\n")] + "\n")
    with pytest.raises(ConfigError, match="at least two"):
        load(bad)


def test_classifier_sees_the_last_user_message():
    msgs = (ChatMessage("system", "You are terse."), ChatMessage("user", "first"), ChatMessage("assistant", "a"), ChatMessage("user", "second"))
    assert question_text(msgs) == "second"


def test_circuit_breaker_opens_cools_down_and_probes():
    from server.tiers.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker

    now = [0.0]
    b = CircuitBreaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 10.0
    assert b.allow() and b.state == HALF_OPEN  # one probe
    assert not b.allow()  # only one
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()


def test_circuit_breaker_counts_incidents_not_their_victims():
    """Failures of requests already under way when a failure was counted
    are that failure's victims; requests started after it count again."""
    from server.tiers.breaker import CLOSED, OPEN, CircuitBreaker

    now = [0.0]
    b = CircuitBreaker(threshold=3, cooldown_s=10, clock=lambda: now[0])
    under_way = [b.mark() for _ in range(6)]
    for mark in under_way:
        b.failure(mark)
    assert (b.state, b.failures) == (CLOSED, 1)
    for _ in range(2):  # two more, each started after the last was counted
        b.failure(b.mark())
    assert b.state == OPEN
    now[0] = 10.0
    late = under_way[0]  # a victim of the first incident, reporting only now
    assert b.allow()
    b.failure(late)
    probe = b.mark()
    b.failure(probe)  # the probe's own failure reopens
    assert b.state == OPEN


def test_circuit_breaker_probe_that_never_reports_back_gives_way():
    from server.tiers.breaker import CLOSED, CircuitBreaker

    now = [0.0]
    b = CircuitBreaker(threshold=1, cooldown_s=10, clock=lambda: now[0])
    b.failure()
    now[0] = 10.0
    assert b.allow()  # the probe is claimed, then its caller goes away: no success, no failure
    now[0] = 15.0
    assert not b.allow()  # still waiting for it
    now[0] = 20.0
    assert b.allow()  # a new probe, instead of half-open for ever
    b.success()
    assert b.state == CLOSED


def test_admission_gate_bounds_in_flight_and_queue():
    import asyncio

    from server.tiers.admission import Gate
    from server.errors import ResourceExhausted

    async def scenario():
        gate = Gate("t", max_in_flight=1, max_queued=1, retry_after_ms=250)
        release = asyncio.Event()

        async def hold():
            async with gate.slot():
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        queued = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert gate.in_flight == 1 and gate.waiting == 1
        try:
            async with gate.slot():
                raise AssertionError("a third request must be refused")
        except ResourceExhausted as exc:
            assert exc.retry_after_ms == 250 and "queued" in exc.message
        release.set()
        await asyncio.gather(first, queued)
        assert gate.in_flight == 0 and gate.waiting == 0

    asyncio.run(scenario())


def _remote_profile(tmp_path, **large) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "config/remote.yaml").read_text())
    cfg["tiers"]["large"].update(large)
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_remote_profile_loads_with_replicas():
    config = load(ROOT / "config/remote.yaml")
    assert {t.backend for t in config.tiers.values()} == {"remote"}
    assert config.tiers["large"].replicas == ("http://vllm-large:8000",)


@pytest.mark.parametrize(
    "large, problem",
    [
        ({"replicas": []}, "needs at least one"),
        ({"replicas": ["vllm-large:8000"]}, "not an http(s) base URL"),
        ({"replicas": ["http://a:1", "http://a:1/"]}, "listed twice"),
        ({"engine_args": {"dtype": "float16"}}, "vllm serve"),
        ({"backend": "cluster"}, "backend must be one of"),
        ({"backend": "in_process"}, "only a remote tier has replicas"),
    ],
)
def test_bad_remote_tiers_are_config_errors(tmp_path, large, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load(_remote_profile(tmp_path, **large))


@pytest.mark.parametrize("threads", [0, -1])
def test_embedding_threads_must_be_positive(tmp_path, threads):
    text = (ROOT / "config/cpu.yaml").read_text().replace("  threads: 1 ", f"  threads: {threads} ", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="embedding.threads"):
        load(path)
    assert load(ROOT / "config/cpu.yaml").embedding.threads == 1


def test_a_copied_profile_fails_at_load_naming_the_path_and_the_server_exits_2(tmp_path):
    import subprocess
    import sys

    copy = tmp_path / "mine.yaml"
    copy.write_text((ROOT / "config/cpu.yaml").read_text())
    with pytest.raises(ConfigError, match=r"tiers.small.model_path: .*does not exist"):
        load(copy)  # before: loaded, listened, then died in vLLM 14 s later
    out = subprocess.run([sys.executable, "-m", "server", "--config", str(copy), "--port", "0", "--metrics-port", "-1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "bad config: tiers.small.model_path" in out.stderr and "Traceback" not in out.stderr


def test_one_setting_changes_without_copying_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-index").mkdir()
    cfg = load(ROOT / "config/cpu.yaml", ["retrieval.index=my-index", "retrieval.top_k=3", "cache.semantic=false", "tiers.small.max_queued=5"])
    assert cfg.retrieval.index == str(tmp_path / "my-index")  # relative to where it was typed
    assert (cfg.retrieval.top_k, cfg.cache.semantic, cfg.tiers["small"].max_queued) == (3, False, 5)
    for bad, message in (("retrieval.top_k", "section.key=value"), ("retrieval.nope=1", "unknown key"), ("limits.max_queued.x=1", "not a section")):
        with pytest.raises(ConfigError, match=message):
            load(ROOT / "config/cpu.yaml", [bad])


def test_cpu_cores_is_a_core_list_or_auto(tmp_path):
    cfg = load(ROOT / "config/cpu.yaml")
    assert (cfg.tiers["small"].cpu_cores, cfg.tiers["large"].cpu_cores) == ("0", "1")
    text = (ROOT / "config/cpu.yaml").read_text().replace("../.cache/", str(ROOT / ".cache") + "/")
    bad = tmp_path / "bad.yaml"
    for value in ('"core0"', '"0;1"', '"-1"'):
        bad.write_text(text.replace('cpu_cores: "1"', f"cpu_cores: {value}"))
        with pytest.raises(ConfigError, match="tiers.large.cpu_cores"):
            load(bad)
    for value in ('"0-1"', "auto", '"0,1"'):
        bad.write_text(text.replace('cpu_cores: "1"', f"cpu_cores: {value}"))
        assert load(bad).tiers["large"].cpu_cores == value.strip('"')


def test_routing_adapt_needs_the_stores_question_texts_and_one_process(tmp_path):
    import yaml

    def profile(**sections) -> Path:
        raw = yaml.safe_load((ROOT / "config" / "cpu.yaml").read_text())
        for tier in raw["tiers"].values():  # the copy lives elsewhere: its relative paths would too
            tier["model_path"] = str((ROOT / "config" / tier["model_path"]).resolve())
        raw.update(sections)
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    adapt = {"adapt": {"enabled": True}}
    store = {"url": f"sqlite:///{tmp_path / 'f.sqlite'}"}
    workers = {**yaml.safe_load((ROOT / "config" / "cpu.yaml").read_text())["server"], "workers": 2}
    with pytest.raises(ConfigError, match="feedback.keep_text"):
        load(profile(routing=adapt, store=store))
    with pytest.raises(ConfigError, match="server.workers > 1 needs a shared store"):
        load(profile(routing=adapt, store=store, feedback={"keep_text": True}, server=workers))
    with pytest.raises(ConfigError, match="min_outcomes"):
        load(profile(routing={"adapt": {"enabled": True, "min_outcomes": 5}}, store=store, feedback={"keep_text": True}))
    config = load(profile(routing=adapt, store=store, feedback={"keep_text": True}))
    assert config.routing.adapt.dir == str(tmp_path / "adapters") and config.routing.adapt.every == 500
    shared = load(profile(routing=adapt, store={"url": "postgresql://triage@db.example/triage"}, feedback={"keep_text": True}, server=workers))
    assert shared.server.workers == 2 and shared.routing.adapt.dir.endswith("triage-adapters")


def test_store_settings_are_checked_and_the_old_feedback_path_is_pointed_to(tmp_path):
    base = ROOT / "config" / "cpu.yaml"
    with pytest.raises(ConfigError, match="feedback.path: the store moved to store.url; set store.url: sqlite:///x.sqlite"):
        load(base, ["feedback.path=x.sqlite"])
    with pytest.raises(ConfigError, match="store.url: mysql://h/db: a store URL is sqlite:///path or postgresql://"):
        load(base, ["store.url=mysql://h/db"])
    with pytest.raises(ConfigError, match="store.url: the folder of .*/no/such/dir/s.sqlite does not exist"):
        load(base, [f"store.url=sqlite:///{tmp_path}/no/such/dir/s.sqlite"])
    with pytest.raises(ConfigError, match="store.timeout_s"):
        load(base, ["store.timeout_s=0"])
    config = load(base, ["store.url=sqlite:///../.cache/t.sqlite"])
    assert config.store.url == f"sqlite:///{(ROOT / '.cache' / 't.sqlite').resolve()}"


@pytest.mark.parametrize("override, message", [
    ("server.workers=0", "server.workers must be an integer >= 1, got 0"),
    ("server.workers=true", "server.workers must be an integer >= 1, got True"),
    ("routing.correction=0", "routing.correction must be a number in (0, 1], got 0"),
    ("routing.shadow.sample=1.5", "routing.shadow.sample must be a number in [0, 1], got 1.5"),
    ("tiers.small.sampling.temperature=3", "tiers.small.sampling.temperature must be a number in [0, 2], got 3"),
    ("tiers.large.stream_interval=0", "tiers.large.stream_interval must be an integer >= 1, got 0"),
    ("feedback.remember_seconds=0", "feedback.remember_seconds must be a number > 0, got 0"),
    ("routing.adapt.min_outcomes=5", "routing.adapt.min_outcomes must be an integer >= 20, got 5"),
])
def test_a_fields_range_is_declared_on_it_and_named_when_broken(override, message):
    # One place per field for its meaning, default and range (config.bounded),
    # checked for every section the same way.
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(ROOT / "config/cpu.yaml", [override])
