"""Shadow evaluation: a sample of answered requests is asked again of a
neighbouring tier, and the two answers are compared, so the routing learns
from live traffic without any caller grading anything.

- An answer of the cheapest tier goes **up** (did the cheap tier fall
  short?); any other tier's goes **down** (would the cheaper tier have been
  enough? the evidence that lets a cut rise, which callers' feedback on the
  capable tier's answers never gives).
- A shadow never delays live traffic nor takes its place: it starts only
  when the target tier is idle (ready, nothing generating or queued on it,
  no other shadow there), takes no admission slot, and is cancelled the
  moment a live request starts on that tier (`yield_to`), which aborts its
  engine request. Otherwise it is dropped and counted. It never reaches the
  caller, the caches, the cost accounting or the target share's window.
- A grader compares the answers (`FinalAnswerGrader` by default: the final
  number, choice letter or code block when both answers have one, else the
  similarity of their embeddings from the semantic cache's model).
- Each comparison is an outcome in the feedback store, for the cheaper tier
  of the two, with the score the request was routed on and the label
  `shadow-up` / `shadow-down`; `calibrate --feedback` reads it like a
  caller's. Agreement is evidence that the cheap tier was enough, not proof
  that either answer is right.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..config import ShadowConfig
from .feedback import Answered
from ..types import ChatMessage, Decision, EffectiveSampling
from ..validation import effective_sampling

log = logging.getLogger("triage.shadow")

_CODE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_CHOICE = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\)?(?![a-z])", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_answer(text: str) -> tuple[str, str] | None:
    """(kind, value) of what an answer settles on, if it says: its last code
    block, a choice letter, or its last number; None for free text."""
    code = _CODE.findall(text)
    if code:
        return "code", " ".join(code[-1].split())
    choice = _CHOICE.findall(text)
    if choice:
        return "choice", choice[-1].upper()
    numbers = _NUMBER.findall(text)
    if numbers:
        return "number", numbers[-1].replace(",", "").rstrip(".")
    return None


class FinalAnswerGrader:
    """Agreement of the final answers when both have one of the same kind;
    otherwise cosine similarity of the two answers' embeddings at or above
    `similarity` (without an embedder: of their word sets, Jaccard)."""

    def __init__(self, embedder=None, similarity: float = 0.85):
        self.embedder, self.similarity = embedder, similarity

    def agree(self, question: str, first: str, second: str) -> bool:
        a, b = final_answer(first), final_answer(second)
        if a is not None and b is not None and a[0] == b[0]:
            return a[1] == b[1]
        if self.embedder is not None:
            u, v = self.embedder.embed([first, second])
            return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12)) >= self.similarity
        x, y = set(first.lower().split()), set(second.lower().split())
        return len(x & y) / max(1, len(x | y)) >= self.similarity


@dataclass(frozen=True)
class Answer:
    """What a shadow needs of a live answer."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: object  # the request's own SamplingRequest
    decision: Decision
    text: str


class Shadows:
    def __init__(self, config: ShadowConfig, tiers, memory, grader, metrics,
                 rng: Callable[[], float] = random.random, keep_text: bool = False, on_stored: Callable[[str], None] | None = None):
        """`memory`: app.Memory, the store the outcomes go to (None: counted only);
        `keep_text`: store the question with its outcome (feedback.keep_text);
        `on_stored(tier)`: an outcome of `tier` is in the store (the adapter loop counts them)."""
        self.config, self.tiers, self.memory, self.grader, self.metrics = config, tiers, memory, grader, metrics
        self._rng, self._keep_text = rng, keep_text
        self._on_stored = on_stored or (lambda tier: None)
        self._running: dict[str, asyncio.Task] = {}  # target tier -> its one shadow

    def on_finished(self, finished) -> None:
        """The listener (finished.py): a generated answer may be shadowed."""
        if finished.generated:
            req = finished.req
            self.consider(Answer(req.request_id, req.messages, req.sampling, finished.decision, finished.text))

    def consider(self, answer: Answer) -> None:
        """After a live answer: maybe shadow it (sampled), if its neighbour is idle."""
        d = answer.decision
        if d.degraded or self._rng() >= self.config.sample:
            return
        names = self.tiers.names
        i = names.index(d.tier)
        j = i + 1 if i == 0 else i - 1
        if j >= len(names):
            return
        direction, target = ("up" if j > i else "down"), self.tiers[names[j]]
        gate = target.gate
        if not target.ready or gate.in_flight or gate.waiting or target.name in self._running:
            self._count(direction, "dropped")
            return
        self._count(direction, "sent")
        task = asyncio.get_running_loop().create_task(self._run(answer, target, direction, names[min(i, j)]))
        self._running[target.name] = task
        task.add_done_callback(lambda t, name=target.name: self._release(name, t))

    def _release(self, tier: str, task: asyncio.Task) -> None:
        """`task` no longer holds `tier` (a newer shadow's hold is left alone)."""
        if self._running.get(tier) is task:
            del self._running[tier]

    def yield_to(self, tier: str) -> None:
        """A live request starts on `tier`: its shadow, if any, stops now."""
        task = self._running.pop(tier, None)
        if task is not None and not task.done():
            task.cancel()

    async def _run(self, answer: Answer, target, direction: str, cheap_tier: str) -> None:
        try:
            text = await self._generate(answer, target)
            # The target is free from here: a live request there no longer cancels the grading and the record.
            self._release(target.name, asyncio.current_task())
            question = next((m.content for m in reversed(answer.messages) if m.role == "user"), "")
            agreed = await asyncio.to_thread(self.grader.agree, question, answer.text, text)
            await self._record(answer, agreed, direction, cheap_tier, question)
        except asyncio.CancelledError:
            self._count(direction, "preempted")
            return
        except Exception as exc:  # a shadow's failure is never the caller's, nor the tier's breaker's
            log.warning("shadow of %s on tier %s failed: %s", answer.request_id, target.name, exc)
            self._count(direction, "failed")
            return
        # Counted last, so that a shadow counted as ended has its outcome in the store.
        self._count(direction, "agreed" if agreed else "disagreed")

    async def _record(self, answer: Answer, agreed: bool, direction: str, cheap_tier: str, question: str) -> None:
        d = answer.decision
        bucket = "nan" if math.isnan(d.p_complex) else f"{min(9, int(d.p_complex * 10)) / 10:.1f}"
        self.metrics.shadow_outcomes.labels(direction, bucket, "true" if agreed else "false").inc()
        if self.memory is not None:
            cheap = self.tiers[cheap_tier]
            row = Answered(cheap_tier, cheap.model, d.p_complex, d.threshold, d.reason, time.time(), question if self._keep_text else None)
            table, request_id = self.memory.feedback, f"{answer.request_id}:shadow"
            # Buffered, off every answer's path: while the database is
            # unreachable it waits (or is dropped when the buffer is full).
            stored = await self.memory.writes.put("shadow", lambda tx: table.write(tx, request_id, row, None, agreed, f"shadow-{direction}"))
            if stored:
                self._on_stored(cheap_tier)

    async def _generate(self, answer: Answer, target) -> str:
        """The same conversation and sampling on the target tier (its own
        defaults for what the request left unset), held to its context."""
        prompt = await target.engine.render(answer.messages)
        sampling: EffectiveSampling = effective_sampling(answer.sampling, target.config.sampling, target.name, clamp=True)
        room = target.config.max_model_len - len(prompt.ids)
        if room < 1:
            raise ValueError("the prompt does not fit the tier's context")
        sampling = replace(sampling, max_tokens=min(sampling.max_tokens, room))
        parts = []
        stream = target.engine.generate(prompt, sampling, f"{answer.request_id}-shadow")
        try:
            async for chunk in stream:
                parts.append(chunk.delta)
        finally:
            await stream.aclose()
        return "".join(parts)

    def _count(self, direction: str, result: str) -> None:
        self.metrics.shadow_requests.labels(direction, result).inc()
