"""Plain Python types that cross the boundary between the servicer, the
router core and the engines. No grpc, no vllm: the servicer converts protos to
these, the engines consume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
# Taken as the role beside it, at both front doors: OpenAI's newer models
# read "developer" where older ones read "system".
ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingRequest:
    """Sampling values as the client sent them; None means "not set"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class EffectiveSampling:
    """The values the engine really uses: request values over tier defaults."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    repetition_penalty: float


@dataclass(frozen=True)
class GenerateInput:
    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingRequest = field(default_factory=SamplingRequest)
    route: str | None = None  # "small" | "large" | None (classifier decides)
    threshold: float | None = None
    cache_mode: str = "default"  # "default" | "exact_only" | "off"
    retrieval: bool | None = None  # None: the tier's configured default
    retrieval_top_k: int | None = None
    deadline_s: float | None = None  # the caller's remaining time when the RPC arrived, if it set one
    trace_parent: str | None = None  # the caller's W3C traceparent (gRPC metadata or HTTP header), if any
    session_id: str = ""  # a conversation's id, for session affinity; "": none
    caller: str = "other"  # who asks (server/callers/identity.py): a configured caller's name, or config.OTHER_CALLER
    # False: the caller sees nothing before the whole answer (unary), so the
    # router holds the text back, and an engine that fails midway may still
    # be replaced by another tier.
    stream: bool = True


@dataclass(frozen=True)
class Decision:
    tier: str
    model: str
    p_complex: float
    threshold: float
    reason: str  # "classifier" | "override" | "fallback"
    degraded: bool = False


@dataclass
class Timings:
    """Milliseconds per stage; filled in as the request moves along."""

    classify_ms: float = 0.0
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0
    cache_ms: float = 0.0
    retrieve_ms: float = 0.0
    routing_ms: float = 0.0  # arrival -> handed to the engine; ttft_ms - routing_ms is the engine's own


@dataclass(frozen=True)
class Prompt:
    """A conversation rendered for one tier: its token ids (what the length
    check and the usage count, and what most engines generate from) and the
    messages they came from (what a gateway tier sends: its gateway takes
    messages, not ids)."""

    ids: list[int]
    messages: tuple[ChatMessage, ...]


@dataclass(frozen=True)
class EngineChunk:
    """One step of engine output: new text since the previous chunk."""

    delta: str
    completion_tokens: int  # cumulative
    finished: bool = False
    finish_reason: str | None = None
    queue_s: float | None = None  # engine-side queue time, when known


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # What the answer cost on its tier, and on the most capable tier
    # (server/observe/costs.py; 0 for a cached one), in the profile's unit.
    cost: float = 0.0
    cost_if_most_capable: float = 0.0


# Events the router core yields for one generation, in this order:
# one DecisionEvent, any number of DeltaEvents, one FinalEvent.
@dataclass(frozen=True)
class DecisionEvent:
    decision: Decision


@dataclass(frozen=True)
class DeltaEvent:
    text: str


@dataclass(frozen=True)
class CacheResult:
    status: str  # MISS | EXACT | SEMANTIC | BYPASS
    similarity: float = 0.0


@dataclass(frozen=True)
class RetrievalResult:
    hits: tuple  # retrieval.Hit, best first, as placed in the prompt
    dropped: int  # lowest-ranked chunks left out to fit the context


@dataclass(frozen=True)
class FinalEvent:
    finish_reason: str
    usage: Usage
    timings: Timings
    sampling: EffectiveSampling
    cache: CacheResult = CacheResult("BYPASS")
    retrieval: RetrievalResult | None = None


# Label sets of the router's metrics, owned here so the metrics (observe/)
# and the code that counts them (routing/) share them without importing
# each other.
FEEDBACK_RESULTS = ("rating_1", "rating_2", "rating_3", "rating_4", "rating_5", "correct", "incorrect")  # router_feedback_total
SPILL_REASONS = ("queue_full", "queue_wait")  # why a tier is too busy to take a request soon (a spill's `busy`)
SHADOW_DIRECTIONS = ("up", "down")
SHADOW_RESULTS = ("sent", "dropped", "preempted", "failed", "agreed", "disagreed")
ADAPTER_FIT_RESULTS = ("adopted", "refused", "failed")  # router_adapter_fits_total


def question_text(messages) -> str:
    """The question being asked now: the last user message (what the caches,
    retrieval and the feedback store key on; the score also weighs the
    turns before it, routing/conversation.py)."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content if messages else ""
