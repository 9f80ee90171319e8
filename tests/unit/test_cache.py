"""The caches' own rules: keys, bounds, eviction, TTL, false-hit guards."""

from __future__ import annotations

import numpy as np
import pytest

from server.lookup.cache import (
    CachedAnswer, ExactCache, SemanticCache, is_deterministic, normalise_content, request_key, signature,
)
from server.types import ChatMessage, EffectiveSampling

GREEDY = EffectiveSampling(0.0, 1.0, 0, 64, (), None, 1.0)


def answer(text="Paris.") -> CachedAnswer:
    return CachedAnswer(text, "stop", 10, 3)


def msgs(*contents: str) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage("user", c) for c in contents)


def test_key_normalises_whitespace_but_not_case_or_code():
    k = lambda *m: request_key(msgs(*m), GREEDY, "small", "M")
    assert k("What is  the capital of France? ") == k("What is the capital of France?")
    assert k("What is the capital of France?") != k("what is the capital of france?")
    assert normalise_content("```py\\nx  =  1\\n```") == "```py\\nx  =  1\\n```"


def test_key_covers_sampling_tier_model_and_every_message():
    base = request_key(msgs("hi"), GREEDY, "small", "M")
    from dataclasses import replace

    assert base != request_key(msgs("hi"), replace(GREEDY, max_tokens=65), "small", "M")
    assert base != request_key(msgs("hi"), GREEDY, "large", "M")
    assert base != request_key(msgs("hi"), GREEDY, "small", "N")
    assert base != request_key((ChatMessage("system", "be terse"), *msgs("hi")), GREEDY, "small", "M")


def test_only_deterministic_requests_are_cacheable():
    from dataclasses import replace

    assert is_deterministic(GREEDY)
    assert not is_deterministic(replace(GREEDY, temperature=0.7))
    assert is_deterministic(replace(GREEDY, temperature=0.7, seed=3))


def test_exact_cache_is_bounded_by_entries_and_bytes_with_lru_and_ttl():
    now = [0.0]
    c = ExactCache(max_entries=2, max_bytes=10_000, ttl_seconds=5, clock=lambda: now[0])
    c.put("a", answer())
    c.put("b", answer())
    assert c.get("a") is not None  # a is now most recent
    c.put("c", answer())
    assert c.get("b") is None and c.get("a") is not None and len(c) == 2
    now[0] = 6.0
    assert c.get("a") is None  # expired
    small = ExactCache(max_entries=100, max_bytes=300)
    for i in range(10):
        small.put(str(i), answer("x" * 100))
    assert small.bytes <= 300 and len(small) == 1
    small.put("huge", answer("x" * 1000))  # larger than the whole cache: not stored
    assert small.get("huge") is None


@pytest.mark.parametrize(
    "a, b",
    [
        ("What is 15% of 80?", "What is 15% of 90?"),
        ("Who was the president of France in 1995?", "Who was the president of Germany in 1995?"),
        ("Is Pluto a planet?", "Is Pluto not a planet?"),
        ("Can I take ibuprofen with food?", "Can't I take ibuprofen with food?"),
    ],
)
def test_signature_separates_numbers_names_and_negations(a, b):
    assert signature(a) != signature(b)


def test_signature_ignores_case_and_sentence_initial_capitals():
    assert signature("What is the capital of France?") == signature("what is the capital of France")


def test_semantic_cache_threshold_context_signature_and_ring():
    rng = np.random.default_rng(0)
    unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)
    v1 = unit(rng.normal(size=8))
    c = SemanticCache(dim=8, max_entries=3, threshold=0.95)
    c.add(v1, "ctx", "What is the capital of France?", answer())
    near = unit(v1 + 0.01 * rng.normal(size=8))
    hit, sim = c.search(near, "ctx", "Tell me the capital of France")
    assert hit is not None and sim >= 0.95
    assert c.search(near, "other ctx", "Tell me the capital of France")[0] is None
    assert c.search(near, "ctx", "What is the capital of Spain?")[0] is None  # a name differs
    assert c.search(unit(rng.normal(size=8)), "ctx", "What is the capital of France?")[0] is None  # far away
    for i in range(5):  # ring: the oldest entry is overwritten in place
        c.add(unit(rng.normal(size=8)), "ctx", f"question {i}", answer(f"a{i}"))
    assert len(c) == 3 and c.search(v1, "ctx", "What is the capital of France?")[0] is None
    assert c.bytes > 3 * 8 * 4


def test_semantic_scores_stay_within_float16_error_and_overwritten_rows_are_found():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    c = SemanticCache(dim=384, max_entries=40, threshold=-1.0)
    for i, v in enumerate(vectors):  # the last 10 overwrite rows 0..9 in place
        c.add(v, "ctx", "same question", answer(f"a{i}"))
    for i in (10, 39, 40, 49):
        query = vectors[i] + 0.05 * rng.normal(size=384).astype(np.float32)
        query /= np.linalg.norm(query)
        hit, sim = c.search(query, "ctx", "same question", k=1)
        assert hit.text == f"a{i}"
        assert abs(sim - float(query @ vectors[i])) < 1e-3


def test_replayed_deltas_concatenate_to_the_answer():
    from server.router import replay_deltas

    text = "The capital of France is Paris.\\n\\nIt is  large."
    pieces = replay_deltas(text)
    assert "".join(pieces) == text and len(pieces) >= 3


def test_binary_candidates_keep_the_nearest_entry_in_a_cache_larger_than_them():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    c = SemanticCache(dim=384, max_entries=3000, threshold=0.95, candidates=32)
    for i, v in enumerate(vectors):
        c.add(v, "ctx", "same question", answer(f"a{i}"))
    eligible = found = 0
    for i in rng.choice(3000, 100, replace=False):
        query = vectors[i] + 0.0165 * rng.normal(size=384).astype(np.float32)  # cosine ~0.95-0.96 to its source
        query /= np.linalg.norm(query)
        hit, sim = c.search(query, "ctx", "same question")
        if float(query @ vectors[i]) >= 0.951:  # clear of float16 rounding at the threshold
            eligible += 1
            found += hit is not None and hit.text == f"a{i}"
        elif float(query @ vectors[i]) < 0.949:
            assert hit is None
    assert eligible >= 20 and found == eligible  # every one above the threshold, from 32 candidates of 3,000


def test_a_search_from_any_thread_runs_faiss_on_one_thread():
    """OpenMP's thread count is per calling thread: set once at start-up, it
    did not reach the asyncio worker threads that search, where waking
    faiss's second thread made a lookup ~20x slower in the router."""
    import threading

    import faiss

    c = SemanticCache(dim=8, max_entries=4, threshold=0.95)
    v = np.ones(8, dtype=np.float32) / np.sqrt(8)
    c.add(v, "ctx", "question", answer())
    seen = {}

    def worker():
        seen["before"] = faiss.omp_get_max_threads()
        c.search(v, "ctx", "question")
        seen["after"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["after"] == 1
    if seen["before"] == 1:
        pytest.skip("this machine has one core: a new thread already searches on one thread")


def test_similarity_is_reported_for_a_semantic_hit_only():
    from server.fronts.servicer import _cache
    from server.types import CacheResult, EffectiveSampling, FinalEvent, Timings, Usage

    def final(status, similarity):
        return FinalEvent("stop", Usage(1, 1), Timings(), EffectiveSampling(0.0, 1.0, 0, 8, (), None, 1.0), CacheResult(status, similarity))

    assert _cache(final("MISS", 0.91)).similarity == 0.0  # a near miss's best score is not a similarity of the answer
    assert _cache(final("SEMANTIC", 0.97)).similarity == pytest.approx(0.97)
