"""Exact and semantic caches and retrieval, on the real engines with the real
embedding model and real faiss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients import InvalidArgumentError
from triage_proto import router_pb2 as pb

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def engine_requests(live, tier: str) -> float:
    return live.metric_value("router_engine_requests_total", tier=tier) or 0.0


def tokens(answer) -> tuple[int, int]:
    return answer.usage.prompt_tokens, answer.usage.completion_tokens


def test_repeated_greedy_question_comes_from_the_exact_cache(live):
    q = "Name the largest ocean on Earth."
    first = live.client.generate(q, route="small", max_tokens=24)
    calls = engine_requests(live, "small")
    second = live.client.generate(q, route="small", max_tokens=24)
    assert first.cache.status == pb.CACHE_MISS and second.cache.status == pb.CACHE_EXACT
    assert second.text == first.text and tokens(second) == tokens(first)
    assert second.usage.cost == 0 < first.usage.cost  # a cached answer costs nothing (savings accounting)
    assert engine_requests(live, "small") == calls  # the engine was not asked again
    assert second.timings.total_ms < first.timings.total_ms and second.timings.cache_ms > 0
    assert first.timings.routing_ms > 0 and second.timings.routing_ms == 0  # no engine was asked for the hit
    stream = list(live.client.generate_stream(q, route="small", max_tokens=24))
    deltas = [e.delta for e in stream if e.WhichOneof("event") == "delta"]
    assert len(deltas) >= 2 and "".join(deltas) == first.text
    assert stream[-1].final.cache.status == pb.CACHE_EXACT
    assert engine_requests(live, "small") == calls


def aborts(live, tier: str) -> float:
    return live.metric_value("router_semantic_overlap_aborts_total", tier=tier) or 0.0


def test_paraphrase_hits_the_semantic_cache_and_aborts_the_engine_request_it_started(live):
    """The semantic search runs beside the engine request (cache.semantic_overlap,
    on in the CPU profile): on a hit the engine request is aborted and the
    cached answer is the one sent, with none of the engine's text."""
    first = live.client.generate("What is the capital of Australia?", route="small", max_tokens=24)
    assert first.cache.status == pb.CACHE_MISS
    calls, aborted = engine_requests(live, "small"), aborts(live, "small")
    para = live.client.generate("What's the capital of Australia?", route="small", max_tokens=24)
    assert para.cache.status == pb.CACHE_SEMANTIC and para.cache.similarity >= 0.95
    assert para.text == first.text and tokens(para) == tokens(first) and para.usage.cost == 0
    assert engine_requests(live, "small") == calls + 1  # started beside the search...
    assert aborts(live, "small") == aborted + 1  # ...and aborted when it hit
    stream = list(live.client.generate_stream("What's the capital city of Australia?", route="small", max_tokens=24))
    assert stream[-1].final.cache.status == pb.CACHE_SEMANTIC
    assert "".join(e.delta for e in stream if e.WhichOneof("event") == "delta") == first.text
    assert aborts(live, "small") == aborted + 2
    wait_for(lambda: live.metric_value("router_engine_unfinished_requests", tier="small") == 0, 10, "the engine to drop the aborted requests")


def test_a_semantic_miss_answers_as_without_the_cache(live):
    q = "Name a famous bridge in San Francisco."
    uncached = live.client.generate(q, route="small", max_tokens=24, cache="off")
    aborted = aborts(live, "small")
    miss = live.client.generate(q, route="small", max_tokens=24)
    assert miss.cache.status == pb.CACHE_MISS
    assert miss.text == uncached.text and miss.usage == uncached.usage
    assert aborts(live, "small") == aborted


@pytest.mark.parametrize(
    "first, second",
    [
        ("What is 15% of 80?", "What is 15% of 90?"),  # one number
        ("Is Pluto a planet?", "Is Pluto not a planet?"),  # a negation (MiniLM similarity ~0.97)
        ("Who wrote the novel Emma?", "Who wrote the novel Ulysses?"),  # a name
    ],
)
def test_near_miss_questions_do_not_share_an_answer(live, first, second):
    live.client.generate(first, route="small", max_tokens=16)
    calls = engine_requests(live, "small")
    r = live.client.generate(second, route="small", max_tokens=16)
    assert r.cache.status == pb.CACHE_MISS
    assert engine_requests(live, "small") == calls + 1


def test_sampled_requests_bypass_the_cache_and_opt_outs_work(live):
    q = "Suggest a name for a pet goldfish."
    for _ in range(2):
        r = live.client.generate(q, route="small", max_tokens=12, temperature=0.9)
        assert r.cache.status == pb.CACHE_BYPASS
    seeded = [live.client.generate(q, route="small", max_tokens=12, temperature=0.9, seed=7) for _ in range(2)]
    assert [r.cache.status for r in seeded] == [pb.CACHE_MISS, pb.CACHE_EXACT]
    req = lambda mode, text: pb.GenerateRequest(messages=[pb.Message(role="user", content=text)], route=pb.TIER_SMALL,
                                                sampling=pb.SamplingParams(max_tokens=16), cache_mode=mode)
    live.client.generate(req(pb.CACHE_MODE_DEFAULT, "What is the tallest mountain in Africa?"), timeout=120)
    off = live.client.generate(req(pb.CACHE_MODE_OFF, "What is the tallest mountain in Africa?"), timeout=120)
    assert off.cache.status == pb.CACHE_BYPASS
    exact_only = live.client.generate(req(pb.CACHE_MODE_EXACT_ONLY, "What's the tallest mountain in Africa?"), timeout=120)
    assert exact_only.cache.status == pb.CACHE_MISS  # the paraphrase would hit semantically


def retrieval_request(question: str, top_k: int | None = None, route=pb.TIER_SMALL, max_tokens: int = 48) -> pb.GenerateRequest:
    r = pb.RetrievalRequest(enabled=True)
    if top_k is not None:
        r.top_k = top_k
    return pb.GenerateRequest(messages=[pb.Message(role="user", content=question)], route=route,
                              sampling=pb.SamplingParams(max_tokens=max_tokens), retrieval=r, cache_mode=pb.CACHE_MODE_OFF)


def test_retrieval_answers_from_the_documents_and_lists_the_source(live):
    r = live.client.generate(retrieval_request("What is the calibration code of the Zorblax reactor?", top_k=3), timeout=120)
    assert r.retrieval.sources[0].document == "zorblax.md" and r.retrieval.sources[0].score > 0.5
    assert "7431" in r.text, r.text
    assert r.timings.retrieve_ms > 0 and r.retrieval.dropped == 0
    # The classifier saw the question, not the sources: same score as without retrieval.
    c = live.client.classify("What is the calibration code of the Zorblax reactor?")
    assert r.decision.p_complex == pytest.approx(c.decision.p_complex)
    plain = live.client.generate("What is the calibration code of the Zorblax reactor?", route="small", max_tokens=48)
    assert "7431" not in plain.text and not plain.retrieval.sources


def test_context_overflow_drops_the_lowest_ranked_chunks(live):
    r = live.client.generate(retrieval_request("What did the clerks of the Quillby archive write about?", top_k=10, max_tokens=400), timeout=180)
    kept = len(r.retrieval.sources)
    assert r.retrieval.dropped > 0 and kept + r.retrieval.dropped == 10
    scores = [s.score for s in r.retrieval.sources]
    assert scores == sorted(scores, reverse=True)  # what was kept is the best-ranked
    assert r.usage.prompt_tokens + 400 <= 2048


def test_bad_retrieval_top_k(live):

    with pytest.raises(InvalidArgumentError, match="retrieval.top_k"):
        live.client.generate(retrieval_request("hello", top_k=0), timeout=30)


def test_missing_or_corrupt_index_fails_at_start_up(tmp_path):
    import yaml

    cfg = yaml.safe_load((ROOT / "config/cpu.yaml").read_text())
    for tier in cfg["tiers"].values():  # the profile's relative paths, from its new folder
        tier["model_path"] = str(ROOT / ".cache/models/SmolLM2-135M-Instruct")
    for name, prepare in (("missing", lambda d: None), ("corrupt", lambda d: _corrupt(d))):
        folder = tmp_path / name
        prepare(folder)
        cfg["retrieval"] = {"index": str(folder)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run = subprocess.run([sys.executable, "-m", "server", "--config", str(path), "--port", "0", "--metrics-port", "-1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr[-2000:]
        assert "retrieval index" in run.stderr and "Traceback" not in run.stderr
        assert "gRPC on" not in run.stdout  # it never started listening


def _corrupt(folder: Path) -> None:
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format": 1, "embedding_model": "all-MiniLM-L6-v2", "dim": 384, "chunks": 1, "chunks_sha256": "x"}')
    (folder / "chunks.jsonl").write_text('{"document": "a", "chunk": 0, "text": "a"}\n')
    (folder / "index.faiss").write_bytes(b"not a faiss index")


def test_cache_shows_in_stats_and_metrics(live):
    stats = live.client.stats()
    assert stats.cache_lookups > 0 and stats.exact_hit_rate > 0 and stats.semantic_hit_rate > 0
    assert "cache:" in stats.summary
    text = live.metrics()
    assert 'router_cache_lookups_total{kind="exact",result="hit"}' in text
    assert live.metric_value("router_cache_entries", kind="semantic") >= 1
    assert "router_retrieve_duration_seconds_count" in text
