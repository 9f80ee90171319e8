"""Request checks that need no engine. Each failure names the field.

Tier-dependent checks (max_tokens cap, prompt length in tokens) happen in the
router once the tier is known.
"""

from __future__ import annotations

import math

from .config import SamplingDefaults
from .errors import InvalidArgument, NotFound
from .types import ROLES, ChatMessage, EffectiveSampling, GenerateInput, SamplingRequest

MAX_STOP_STRINGS = 16
MIN_TEMPERATURE = 0.01  # vLLM's own floor for a non-zero temperature (sampling_params._MAX_TEMP)
MAX_REQUEST_ID = 128
MAX_SESSION_ID = 200
MAX_RETRIEVAL_TOP_K = 100


def valid_request_id(request_id: str) -> bool:
    return len(request_id) <= MAX_REQUEST_ID and request_id.isprintable()


def check_request_id(request_id: str) -> None:
    if not valid_request_id(request_id):
        raise InvalidArgument("request_id", f"must be printable and at most {MAX_REQUEST_ID} characters")


def check_request(req: GenerateInput, limits, tiers) -> None:
    """Everything about a Generate request that needs no tier, in one place,
    before any work (limits: LimitsConfig; tiers: the configured names). The
    tier-dependent checks (max_tokens cap, prompt length in tokens) happen
    where the tier is known: effective_sampling and the router's render."""
    check_request_id(req.request_id)
    if len(req.session_id) > MAX_SESSION_ID or not req.session_id.isprintable():
        raise InvalidArgument("session_id", f"must be printable and at most {MAX_SESSION_ID} characters")
    check_sampling(req.sampling)
    if req.route is not None and req.route not in tiers:
        raise NotFound(f"route: no tier named {req.route!r}; tiers: {', '.join(tiers)}")
    check_messages(req.messages, limits)
    check_threshold(req.threshold)
    if req.retrieval_top_k is not None and not 1 <= req.retrieval_top_k <= MAX_RETRIEVAL_TOP_K:
        raise InvalidArgument("retrieval.top_k", f"must be in [1, {MAX_RETRIEVAL_TOP_K}], got {req.retrieval_top_k}")


def _finite(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(field, f"must be a finite number, got {value}")


def check_messages(messages: tuple[ChatMessage, ...], limits) -> None:
    """Shape and size, before any tokenisation work (limits: LimitsConfig)."""
    if not messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(messages) > limits.max_messages:
        raise InvalidArgument("messages", f"at most {limits.max_messages} messages, got {len(messages)}")
    total = 0
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.role[:32]!r}")
        if len(m.content) > limits.max_message_chars:
            raise InvalidArgument(f"messages[{i}].content", f"at most {limits.max_message_chars} characters, got {len(m.content)}")
        # An assistant turn replayed from history may be empty (OpenAI's
        # content: null beside a refusal or tool calls); a question may not.
        if not m.content.strip() and m.role != "assistant":
            raise InvalidArgument(f"messages[{i}].content", "must not be empty")
        check_text(f"messages[{i}].content", m.content)
        total += len(m.content)
    if total > limits.max_total_chars:
        raise InvalidArgument("messages", f"at most {limits.max_total_chars} characters in all, got {total}")
    if not any(m.role == "user" for m in messages):
        raise InvalidArgument("messages", "at least one message must have role 'user'")


def check_text(field: str, text: str) -> None:
    """Text that UTF-8 can carry. gRPC cannot deliver anything else, but
    JSON can: an escaped lone surrogate ("\\ud800") decodes to a str that
    every later encode (the cache key, the tokenizer) fails on."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(field, f"holds an unpaired surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}, "
                                         "which is not text") from None


def check_threshold(threshold: float | None) -> None:
    if threshold is not None:
        _finite("threshold", threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InvalidArgument("threshold", f"must be in [0, 1], got {threshold}")


def check_sampling(s: SamplingRequest) -> None:
    if s.temperature is not None:
        _finite("sampling.temperature", s.temperature)
        if not 0.0 <= s.temperature <= 2.0:
            raise InvalidArgument("sampling.temperature", f"must be in [0, 2], got {s.temperature}")
        if 0.0 < s.temperature < MIN_TEMPERATURE:
            # vLLM would quietly raise it to 0.01; effective_sampling must be what ran.
            raise InvalidArgument("sampling.temperature", f"must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {s.temperature:g}")
    if s.top_p is not None:
        _finite("sampling.top_p", s.top_p)
        if not 0.0 < s.top_p <= 1.0:
            raise InvalidArgument("sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.top_k is not None and s.top_k < -1:
        raise InvalidArgument("sampling.top_k", f"must be -1 or 0 (disabled) or at least 1, got {s.top_k}")
    if s.max_tokens is not None and s.max_tokens < 1:
        raise InvalidArgument("sampling.max_tokens", f"must be at least 1, got {s.max_tokens}")
    if s.repetition_penalty is not None:
        _finite("sampling.repetition_penalty", s.repetition_penalty)
        if not 0.0 < s.repetition_penalty <= 2.0:
            raise InvalidArgument("sampling.repetition_penalty", f"must be in (0, 2], got {s.repetition_penalty}")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument("sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(s.stop)}")
    for i, stop in enumerate(s.stop):
        if not stop:
            raise InvalidArgument(f"sampling.stop[{i}]", "must not be empty")
        check_text(f"sampling.stop[{i}]", stop)


def allows(s: SamplingRequest, defaults: SamplingDefaults, tier: str) -> bool:
    """The request's own sampling values are valid on that tier too (a
    spill never shortens an answer)."""
    try:
        effective_sampling(s, defaults, tier)
    except InvalidArgument:
        return False
    return True


def effective_sampling(s: SamplingRequest, defaults: SamplingDefaults, tier: str, clamp: bool = False) -> EffectiveSampling:
    """The request's own values win; every unset value takes the tier's
    default, never the model's generation_config.json. `clamp` (a fallback
    tier) caps max_tokens at the tier's cap instead of refusing: the request
    was valid for the tier it was meant for."""
    max_tokens = defaults.max_tokens if s.max_tokens is None else s.max_tokens
    if clamp:
        max_tokens = min(max_tokens, defaults.max_tokens_cap)
    if max_tokens > defaults.max_tokens_cap:
        raise InvalidArgument("sampling.max_tokens", f"tier {tier} allows at most {defaults.max_tokens_cap}, got {max_tokens}")
    stops = tuple(dict.fromkeys((*s.stop, *defaults.stop)))  # request's first, no duplicates
    return EffectiveSampling(
        temperature=defaults.temperature if s.temperature is None else s.temperature,
        top_p=defaults.top_p if s.top_p is None else s.top_p,
        top_k=defaults.top_k if s.top_k is None else max(s.top_k, 0),
        max_tokens=max_tokens,
        stop=stops,
        seed=s.seed,
        repetition_penalty=defaults.repetition_penalty if s.repetition_penalty is None else s.repetition_penalty,
    )
