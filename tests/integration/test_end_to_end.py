"""The service end to end on the real vLLM CPU engines (loopback only)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from .conftest import deltas_of, read_slowly

from clients import DeadlineExceededError, InvalidArgumentError
from triage_proto import router_pb2 as pb

SMALL, LARGE = pb.TIER_SMALL, pb.TIER_LARGE
GSM8K = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_health_turns_serving_after_warmup(live):
    assert live.health_before_ready == "NOT_SERVING"
    assert live.client.health() == "SERVING"
    assert live.client.health("router.v1.Router") == "SERVING"


def test_reflection_lists_the_router(live):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(live.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "router.v1.Router" in services and "grpc.health.v1.Health" in services


def test_capital_of_france_goes_small_and_says_paris(live):
    sent = time.time()
    r = live.client.generate("What is the capital of France?", request_id="it-paris")
    answered = time.time()
    assert r.decision.tier == SMALL and r.decision.reason == "classifier" and not r.decision.degraded
    assert r.decision.p_complex < r.decision.threshold
    assert "Paris" in r.text
    assert r.finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 3
    t = r.timings
    assert 0 < t.classify_ms < t.ttft_ms <= t.total_ms
    # The router's own part of TTFT (arrival to the engine) covers the
    # classification and is a small part of the whole: the rest is prefill.
    assert t.classify_ms < t.routing_ms < t.ttft_ms / 2
    # Greedy and the tier's own default: not generation_config.json's
    # temperature 1.6 / max_new_tokens 3.
    s = r.effective_sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens) == (0.0, 1.0, 0, 128)
    # One structured log line for the request, without the question's text.
    lines = [l for l in live.log().splitlines() if '"request_id": "it-paris"' in l]
    assert len(lines) == 1 and '"tier": "small"' in lines[0] and "France" not in lines[0]
    line = json.loads(lines[0][lines[0].index("{"):])
    assert sent <= line["arrived_at"] <= answered - t.total_ms / 1e3 + 0.05  # its arrival, on the wall clock


def test_word_problem_goes_large(live):
    r = live.client.generate(GSM8K, max_tokens=32)
    assert r.decision.tier == LARGE and r.decision.reason == "classifier"
    assert r.decision.p_complex >= r.decision.threshold
    assert r.decision.model == "SmolLM2-135M-Instruct"
    assert r.usage.completion_tokens > 0


def test_greedy_output_is_stable_despite_a_sampling_generation_config(live):
    answers = {live.client.generate("Name three primary colors.", route="small", max_tokens=40).text for _ in range(3)}
    assert len(answers) == 1, answers
    (answer,) = answers
    assert len(answer.split()) > 3  # not cut to generation_config's 3 tokens


def test_stream_deltas_concatenate_to_the_unary_answer(live):
    question = "Explain in two sentences why the sky is blue."
    unary = live.client.generate(question, max_tokens=48)
    events = list(live.client.generate_stream(question, max_tokens=48))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) - 2 >= 3
    assert "".join(e.delta for e in events if e.WhichOneof("event") == "delta") == unary.text
    final = events[-1].final
    assert final.usage.completion_tokens == unary.usage.completion_tokens
    assert events[0].decision.tier == unary.decision.tier


def test_route_and_threshold_overrides(live):
    r = live.client.generate("What is the capital of France?", route="large", max_tokens=16)
    assert r.decision.tier == LARGE and r.decision.reason == "override"
    r = live.client.generate("What is the capital of France?", threshold=0.0, max_tokens=16)
    assert r.decision.tier == LARGE and r.decision.threshold == 0.0 and r.decision.reason == "classifier"
    r = live.client.generate(GSM8K, threshold=1.0, max_tokens=16)
    assert r.decision.tier == SMALL and r.decision.threshold == 1.0
    c = live.client.classify(GSM8K, threshold=1.0)
    assert c.decision.tier == SMALL and c.classify_ms > 0


def test_deadline_aborts_the_engine_request(live):
    with pytest.raises(DeadlineExceededError):
        live.client.generate("Write a very long story about a dragon and a knight.", route="large", max_tokens=1000, timeout=0.2)
    assert wait_until(lambda: live.metric_value("router_engine_unfinished_requests", tier="large") == 0.0)


def test_cancelled_stream_aborts_the_engine_request(live):
    stream = live.client.generate_stream(
        pb.GenerateRequest(messages=[pb.Message(role="user", content="Write a very long poem about the ocean.")],
                           sampling=pb.SamplingParams(max_tokens=500), route=pb.TIER_SMALL),
        timeout=60,
    )
    seen = 0
    for event in stream:
        seen += event.WhichOneof("event") == "delta"
        if seen >= 2:
            break
    assert live.metric_value("router_engine_unfinished_requests", tier="small") == 1.0
    stream.close()  # the client cancels the call
    assert wait_until(lambda: live.metric_value("router_engine_unfinished_requests", tier="small") == 0.0)


LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 250)  # ~2,500 tokens


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"messages": []}, "messages"),
        ({"messages": [("user", "")]}, "messages[0].content"),
        ({"messages": [("wizard", "hi")]}, "messages[0].role"),
        ({"temperature": 2.5}, "sampling.temperature"),
        ({"temperature": -1.0}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.01}, "sampling.top_p"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"max_tokens": 513, "route": "small"}, "sampling.max_tokens"),
        ({"messages": [("user", LONG_PROMPT + " " + LONG_PROMPT)], "route": "small"}, "messages"),  # ~5,000 tokens: over every tier (a prompt over the small tier's alone goes up, reason "context")
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"stop": [f"s{i}" for i in range(17)]}, "sampling.stop"),
    ],
)
def test_invalid_input_is_invalid_argument_naming_the_field(live, kwargs, field):
    kwargs = dict(kwargs)
    messages = kwargs.pop("messages", "What is the capital of France?")
    with pytest.raises(InvalidArgumentError) as err:
        live.client.generate(messages, **kwargs)
    assert f"{field}:" in err.value.message
    with pytest.raises(InvalidArgumentError):
        list(live.client.generate_stream(messages, **kwargs))


def test_prompt_that_fits_the_large_tier_but_not_the_small_one(live):
    r = live.client.generate([("user", LONG_PROMPT + " How many times is the fox mentioned?")], route="large", max_tokens=8)
    assert r.decision.tier == LARGE and r.usage.prompt_tokens > 2048


def test_list_models_reports_both_tiers_ready(live):
    tiers = {t.tier: t for t in live.client.list_models().tiers}
    assert tiers[SMALL].ready and tiers[LARGE].ready
    assert tiers[SMALL].max_tokens_cap == 512 and tiers[LARGE].max_model_len == 4096
    assert tiers[SMALL].load_seconds > 1 and tiers[LARGE].load_seconds > 1


def test_metrics_are_exposed_per_tier(live):
    text = live.metrics()
    for tier in ("small", "large"):
        assert f'router_time_to_first_token_seconds_count{{tier="{tier}"}}' in text
        assert live.metric_value("router_engine_ready", tier=tier, model="SmolLM2-135M-Instruct") == 1.0
    before = live.metric_value("router_errors_total", code="INVALID_ARGUMENT")
    with pytest.raises(InvalidArgumentError):
        live.client.generate("hi", top_p=0.0)
    # Counted as the handler finishes, which can be just after the client has its answer.
    assert wait_until(lambda: live.metric_value("router_errors_total", code="INVALID_ARGUMENT") == before + 1)
    assert live.metric_value("router_requests_total", rpc="Generate", tier="", reason="", code="INVALID_ARGUMENT") >= 1


def test_each_cpu_engine_computes_on_its_own_core(live):
    """config/cpu.yaml gives the small tier core 0 and the large tier core 1
    (tiers.*.cpu_cores); vLLM's default put both engines' workers on core 0.
    Every thread of each tier's vLLM worker process is bound to its core."""
    import re
    from pathlib import Path

    def worker_cores(tier: str) -> set[str]:
        found = re.findall(rf"tier {tier}: engine loaded in [\d.]+ s \(processes \[([\d, ]+)\]\)", live.log())
        assert found, f"no {tier} engine process ids in the log"
        cores = set()
        for pid in (int(p) for p in found[-1].split(",")):
            proc = Path(f"/proc/{pid}")
            if proc.is_dir() and (proc / "comm").read_text().strip() == "VLLM::Worker":
                for task in (proc / "task").iterdir():
                    status = (task / "status").read_text()
                    cores.add(re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1))
        return cores

    assert worker_cores("small") == {"0"}
    assert worker_cores("large") == {"1"}



STORY = "Write a short story about a lighthouse keeper and a storm."


def test_a_stream_whose_client_keeps_up_gets_a_message_per_token(live):
    events = list(live.client.generate_stream(STORY, route="small", cache="off", max_tokens=96))
    assert events[-1].final.usage.completion_tokens == 96
    assert len(deltas_of(events)) == 96


def test_a_stream_whose_client_reads_slowly_gets_the_whole_text_in_order_in_fewer_messages(live):
    unary = live.client.generate(STORY, route="small", cache="off", max_tokens=96)
    events = read_slowly(live, STORY, route="small", cache="off", max_tokens=96)
    deltas = deltas_of(events)
    print(f"in process, a slow reader: {len(deltas)} messages for 96 tokens")
    assert "".join(deltas) == unary.text  # nothing lost, nothing reordered
    assert events[-1].final.usage.completion_tokens == unary.usage.completion_tokens == 96
    assert len(deltas) < 96 / 2
