"""Answer caches: exact (bounded LRU) and semantic (faiss over embeddings).

Both are consulted after the routing decision, because the key includes the
tier, the model and the effective sampling values: the same question asked of
another model, or with another max_tokens, is another question.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .faiss_threads import single_threaded_faiss
from ..types import ChatMessage, EffectiveSampling

log = logging.getLogger("triage.cache")

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def nbytes(self) -> int:
        return len(self.text.encode()) + 64


def normalise_content(content: str) -> str:
    """Whitespace only, and never inside code: case can change meaning
    ("US" / "us"), so it is kept."""
    if "```" in content:
        return content.strip()
    return _SPACE.sub(" ", content).strip()


def is_deterministic(s: EffectiveSampling) -> bool:
    return s.temperature == 0.0 or s.seed is not None


def request_key(messages: tuple[ChatMessage, ...], sampling: EffectiveSampling, tier: str, model: str) -> str:
    payload = {
        "m": [(m.role, normalise_content(m.content)) for m in messages],
        "s": [sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens, list(sampling.stop), sampling.seed, sampling.repetition_penalty],
        "t": tier,
        "model": model,
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


class ExactCache:
    """LRU bounded by entries and bytes, with an optional TTL."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_seconds: float | None = None, clock=time.monotonic):
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl_seconds
        self._clock = clock
        self._items: OrderedDict[str, tuple[CachedAnswer, float]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> CachedAnswer | None:
        item = self._items.get(key)
        if item is None:
            return None
        answer, stored = item
        if self.ttl is not None and self._clock() - stored > self.ttl:
            self._remove(key)
            return None
        self._items.move_to_end(key)
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        if answer.nbytes > self.max_bytes:
            return
        if key in self._items:
            self._remove(key)
        self._items[key] = (answer, self._clock())
        self.bytes += answer.nbytes
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._items)))

    def _remove(self, key: str) -> None:
        answer, _ = self._items.pop(key)
        self.bytes -= answer.nbytes


# Guards against the known false hits of embedding similarity: questions that
# differ only in a number, a name or a negation embed almost identically.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][\w'-]+")
_NEGATION = re.compile(r"\b(?:not|no|never|none|nobody|nothing|neither|nor|without|cannot)\b|n't\b", re.IGNORECASE)


def signature(text: str) -> tuple:
    """What must match exactly for two questions to share an answer."""
    return (
        tuple(sorted(_NUMBER.findall(text))),
        tuple(sorted(w.lower() for w in _NAME.findall(text))),
        len(_NEGATION.findall(text)) % 2,  # "not not" is not a negation
    )


class SemanticCache:
    """Single-turn questions, matched by cosine similarity (inner product of
    unit vectors), within the same context (system prompt, sampling, tier,
    model) and with the same signature.

    Search in two steps, both over every entry:
    1. candidates: each vector's 384 signs as a 48-byte binary code in a faiss
       IndexBinaryFlat; the `candidates` entries nearest in Hamming distance
       (the angle between two vectors, estimated from their signs). A
       paraphrase above 0.95 (under 18 degrees) differs in about 38 of 384
       signs; unrelated questions in about 190.
    2. rescoring: those candidates' float16 copies, dotted with the question
       exactly. A float16 component is off by at most 2^-11 of itself, so a
       similarity moves by at most ~0.0005.
    Scanning 48 bytes instead of 1,536 per entry is what makes a lookup in a
    full cache fast; the benchmark reports how often step 1 keeps the exact
    nearest entry (docs/benchmarks.md). A miss there costs a generation,
    never a wrong answer: the threshold and the guards apply to exact scores.

    Entries live in a ring of `max_entries` rows: when full, the oldest row
    is overwritten in place (codes in faiss's own storage, vector in ours).
    """

    def __init__(self, dim: int, max_entries: int, threshold: float, candidates: int = 256):
        import faiss

        self._faiss = faiss
        self.dim = dim
        self.threshold = threshold
        self.max_entries = max_entries
        self.candidates = candidates
        self._codes = faiss.IndexBinaryFlat(dim)
        self._vectors = np.zeros((min(max_entries, 1024), dim), dtype=np.float16)  # grows by doubling
        self._meta: list[tuple[str, tuple, CachedAnswer]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._answer_bytes = 0

    def __len__(self) -> int:
        return len(self._meta)

    @property
    def bytes(self) -> int:
        return self._answer_bytes + len(self._meta) * (self._codes.code_size + self.dim * 2)

    def search(self, vector: np.ndarray, context: str, text: str, k: int = 8) -> tuple[CachedAnswer | None, float]:
        """The best entry above the threshold with the same context and
        signature, and its similarity (or the best similarity seen)."""
        query = vector.reshape(-1).astype(np.float32)
        with self._lock:
            if not self._meta:
                return None, 0.0
            single_threaded_faiss()
            _, found = self._codes.search(np.packbits(query > 0)[None], min(self.candidates, len(self._meta)))
            rows = found[0][found[0] >= 0]
            scores = self._vectors[rows].astype(np.float32) @ query
            order = np.argsort(-scores)[:k]
            sig = signature(text)
            for i in order:
                if scores[i] < self.threshold:
                    break
                ctx, entry_sig, answer = self._meta[int(rows[i])]
                if ctx == context and entry_sig == sig:
                    return answer, float(scores[i])
            return None, float(scores[order[0]])

    def add(self, vector: np.ndarray, context: str, text: str, answer: CachedAnswer) -> None:
        row = vector.reshape(-1).astype(np.float32)
        code = np.packbits(row > 0)
        entry = (context, signature(text), answer)
        with self._lock:
            slot = self._next % self.max_entries
            self._next += 1
            if slot == len(self._meta):
                if slot == len(self._vectors):
                    grown = np.zeros((min(2 * len(self._vectors), self.max_entries), self.dim), dtype=np.float16)
                    grown[:slot] = self._vectors
                    self._vectors = grown
                self._codes.add(code[None])
                self._meta.append(entry)
            else:
                size = self._codes.code_size
                stored = self._faiss.rev_swig_ptr(self._codes.xb.data(), self._codes.ntotal * size)
                stored[slot * size : (slot + 1) * size] = code
                self._answer_bytes -= self._meta[slot][2].nbytes
                self._meta[slot] = entry
            self._vectors[slot] = row
            self._answer_bytes += answer.nbytes


# ---- the facade the router uses ---------------------------------------------

MISS, EXACT, SEMANTIC, BYPASS = CACHE_STATUSES = "MISS", "EXACT", "SEMANTIC", "BYPASS"
MODE_DEFAULT, MODE_EXACT_ONLY, MODE_OFF = CACHE_MODES = "default", "exact_only", "off"


@dataclass
class Lookup:
    status: str
    answer: CachedAnswer | None = None
    similarity: float = 0.0
    ms: float = 0.0
    # What `store` needs, kept so a miss is not keyed or embedded twice.
    key: str | None = None
    vector: np.ndarray | None = None
    context: str | None = None
    question: str | None = None
    semantic_pending: bool = False  # the semantic search is still to run (`search_semantic`)
    storable: bool = True  # False: the answer comes from another tier than the one this is keyed on


class ResponseCache:
    """Exact then semantic lookup; store after a normal completion only."""

    def __init__(self, config, embedder=None, metrics=None):
        self.config = config
        self.exact = ExactCache(config.exact_max_entries, config.exact_max_bytes, config.ttl_seconds) if config.exact else None
        self.semantic = (
            SemanticCache(embedder.dim, config.semantic_max_entries, config.semantic_threshold)
            if config.semantic and embedder is not None else None
        )
        self.embedder = embedder
        self._metrics = metrics
        if metrics is not None:
            for kind, cache in (("exact", self.exact), ("semantic", self.semantic)):
                if cache is not None:
                    metrics.cache_entries.labels(kind).set_function(cache.__len__)
                    metrics.cache_bytes.labels(kind).set_function(lambda c=cache: c.bytes)

    def _count(self, kind: str, hit: bool) -> None:
        if self._metrics is not None:
            self._metrics.cache_lookups.labels(kind, "hit" if hit else "miss").inc()

    def _semantic_question(self, messages: tuple[ChatMessage, ...]) -> str | None:
        """The question, if this is a single-turn request short enough to embed whole."""
        users = [m for m in messages if m.role == "user"]
        if len(users) != 1 or any(m.role == "assistant" for m in messages):
            return None
        question = normalise_content(users[0].content)
        return question if len(question) <= self.config.semantic_max_chars else None

    def _embed_and_search(self, question: str, context: str) -> tuple[np.ndarray, tuple[CachedAnswer | None, float]]:
        vector = self.embedder.embed([question])[0]
        return vector, self.semantic.search(vector, context, question)

    def lookup(self, mode: str, messages, sampling: EffectiveSampling, tier: str, model: str, allow_semantic: bool = True) -> Lookup:
        """The exact cache (a hash and a dict: microseconds, on the loop).
        A MISS that the semantic cache may still answer comes back with
        `semantic_pending` set: `search_semantic` finishes it."""
        if mode == MODE_OFF or (self.exact is None and self.semantic is None):
            return Lookup(BYPASS)
        if not (is_deterministic(sampling) or self.config.cache_sampled):
            return Lookup(BYPASS)
        started = time.perf_counter()
        found = Lookup(MISS)
        if self.exact is not None:
            found.key = request_key(messages, sampling, tier, model)
            answer = self.exact.get(found.key)
            self._count("exact", answer is not None)
            if answer is not None:
                found.status, found.answer = EXACT, answer
        question = self._semantic_question(messages) if allow_semantic and mode == MODE_DEFAULT else None
        if found.answer is None and self.semantic is not None and question is not None:
            found.question = question
            found.context = request_key(tuple(m for m in messages if m.role == "system"), sampling, tier, model)
            found.semantic_pending = True
        found.ms = (time.perf_counter() - started) * 1e3
        if not found.semantic_pending:
            self._observe(found)
        return found

    async def search_or_miss(self, found: Lookup, request_id: str) -> None:
        """search_semantic, where a failure is not the request's failure:
        it is a miss that is not stored."""
        try:
            await self.search_semantic(found)
        except Exception:
            log.warning("request %s: semantic cache lookup failed; answering without it", request_id, exc_info=True)
            found.storable = False

    async def search_semantic(self, found: Lookup) -> Lookup:
        """Embed and search for a pending lookup, off the event loop (the
        search scans every entry's code: ~1 ms at 100k). Fills it in: a
        SEMANTIC hit, or a MISS that `store` can key by its vector."""
        import asyncio

        started = time.perf_counter()
        try:
            found.vector, (answer, similarity) = await asyncio.to_thread(self._embed_and_search, found.question, found.context)
        finally:
            found.semantic_pending = False
            found.ms += (time.perf_counter() - started) * 1e3
        self._count("semantic", answer is not None)
        found.similarity = similarity
        if answer is not None:
            found.status, found.answer = SEMANTIC, answer
        self._observe(found)
        return found

    def _observe(self, found: Lookup) -> None:
        if self._metrics is not None:
            self._metrics.cache_lookup_seconds.observe(found.ms / 1e3)

    def store(self, lookup: Lookup, answer: CachedAnswer) -> None:
        if lookup.status != MISS or not lookup.storable:
            return
        if self.exact is not None and lookup.key is not None:
            self.exact.put(lookup.key, answer)
        if self.semantic is not None and lookup.vector is not None:
            self.semantic.add(lookup.vector, lookup.context, lookup.question, answer)
