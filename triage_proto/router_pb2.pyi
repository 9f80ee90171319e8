from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_SMALL: _ClassVar[Tier]
    TIER_LARGE: _ClassVar[Tier]

class CacheMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_MODE_DEFAULT: _ClassVar[CacheMode]
    CACHE_MODE_EXACT_ONLY: _ClassVar[CacheMode]
    CACHE_MODE_OFF: _ClassVar[CacheMode]

class CacheStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STATUS_UNSPECIFIED: _ClassVar[CacheStatus]
    CACHE_MISS: _ClassVar[CacheStatus]
    CACHE_EXACT: _ClassVar[CacheStatus]
    CACHE_SEMANTIC: _ClassVar[CacheStatus]
    CACHE_BYPASS: _ClassVar[CacheStatus]
TIER_UNSPECIFIED: Tier
TIER_SMALL: Tier
TIER_LARGE: Tier
CACHE_MODE_DEFAULT: CacheMode
CACHE_MODE_EXACT_ONLY: CacheMode
CACHE_MODE_OFF: CacheMode
CACHE_STATUS_UNSPECIFIED: CacheStatus
CACHE_MISS: CacheStatus
CACHE_EXACT: CacheStatus
CACHE_SEMANTIC: CacheStatus
CACHE_BYPASS: CacheStatus

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "repetition_penalty")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    repetition_penalty: float
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class RetrievalRequest(_message.Message):
    __slots__ = ("enabled", "top_k")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    top_k: int
    def __init__(self, enabled: _Optional[bool] = ..., top_k: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "messages", "sampling", "route", "threshold", "cache_mode", "retrieval", "route_name", "session_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CACHE_MODE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_NAME_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    sampling: SamplingParams
    route: Tier
    threshold: float
    cache_mode: CacheMode
    retrieval: RetrievalRequest
    route_name: str
    session_id: str
    def __init__(self, request_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., route: _Optional[_Union[Tier, str]] = ..., threshold: _Optional[float] = ..., cache_mode: _Optional[_Union[CacheMode, str]] = ..., retrieval: _Optional[_Union[RetrievalRequest, _Mapping]] = ..., route_name: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class RoutingDecision(_message.Message):
    __slots__ = ("tier", "model", "p_complex", "threshold", "reason", "degraded", "tier_name")
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    P_COMPLEX_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    TIER_NAME_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    model: str
    p_complex: float
    threshold: float
    reason: str
    degraded: bool
    tier_name: str
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., model: _Optional[str] = ..., p_complex: _Optional[float] = ..., threshold: _Optional[float] = ..., reason: _Optional[str] = ..., degraded: _Optional[bool] = ..., tier_name: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cost", "cost_if_most_capable")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_IF_MOST_CAPABLE_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cost_if_most_capable: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost: _Optional[float] = ..., cost_if_most_capable: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("classify_ms", "queue_ms", "ttft_ms", "generate_ms", "total_ms", "cache_ms", "retrieve_ms", "routing_ms")
    CLASSIFY_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVE_MS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_MS_FIELD_NUMBER: _ClassVar[int]
    classify_ms: float
    queue_ms: float
    ttft_ms: float
    generate_ms: float
    total_ms: float
    cache_ms: float
    retrieve_ms: float
    routing_ms: float
    def __init__(self, classify_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., cache_ms: _Optional[float] = ..., retrieve_ms: _Optional[float] = ..., routing_ms: _Optional[float] = ...) -> None: ...

class CacheInfo(_message.Message):
    __slots__ = ("status", "similarity")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    status: CacheStatus
    similarity: float
    def __init__(self, status: _Optional[_Union[CacheStatus, str]] = ..., similarity: _Optional[float] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("document", "chunk", "score")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    document: str
    chunk: int
    score: float
    def __init__(self, document: _Optional[str] = ..., chunk: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class RetrievalInfo(_message.Message):
    __slots__ = ("sources", "dropped")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    dropped: int
    def __init__(self, sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class EffectiveSampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "repetition_penalty")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    repetition_penalty: float
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "finish_reason", "decision", "usage", "timings", "effective_sampling", "cache", "retrieval")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    finish_reason: str
    decision: RoutingDecision
    usage: Usage
    timings: Timings
    effective_sampling: EffectiveSampling
    cache: CacheInfo
    retrieval: RetrievalInfo
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., effective_sampling: _Optional[_Union[EffectiveSampling, _Mapping]] = ..., cache: _Optional[_Union[CacheInfo, _Mapping]] = ..., retrieval: _Optional[_Union[RetrievalInfo, _Mapping]] = ...) -> None: ...

class StreamFinal(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "effective_sampling", "cache", "retrieval")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    usage: Usage
    timings: Timings
    effective_sampling: EffectiveSampling
    cache: CacheInfo
    retrieval: RetrievalInfo
    def __init__(self, finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., effective_sampling: _Optional[_Union[EffectiveSampling, _Mapping]] = ..., cache: _Optional[_Union[CacheInfo, _Mapping]] = ..., retrieval: _Optional[_Union[RetrievalInfo, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("request_id", "decision", "delta", "final")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: RoutingDecision
    delta: str
    final: StreamFinal
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., delta: _Optional[str] = ..., final: _Optional[_Union[StreamFinal, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("messages", "threshold")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    threshold: float
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., threshold: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("decision", "classify_ms")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_MS_FIELD_NUMBER: _ClassVar[int]
    decision: RoutingDecision
    classify_ms: float
    def __init__(self, decision: _Optional[_Union[RoutingDecision, _Mapping]] = ..., classify_ms: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierInfo(_message.Message):
    __slots__ = ("tier", "model", "max_model_len", "default_max_tokens", "max_tokens_cap", "ready", "load_seconds", "tier_name")
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_CAP_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIER_NAME_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    model: str
    max_model_len: int
    default_max_tokens: int
    max_tokens_cap: int
    ready: bool
    load_seconds: float
    tier_name: str
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., model: _Optional[str] = ..., max_model_len: _Optional[int] = ..., default_max_tokens: _Optional[int] = ..., max_tokens_cap: _Optional[int] = ..., ready: _Optional[bool] = ..., load_seconds: _Optional[float] = ..., tier_name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("tiers", "threshold", "cut_points")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CUT_POINTS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierInfo]
    threshold: float
    cut_points: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierInfo, _Mapping]]] = ..., threshold: _Optional[float] = ..., cut_points: _Optional[_Iterable[float]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("tier", "model", "requests", "share", "mean_latency_ms", "p95_latency_ms", "mean_ttft_ms", "completion_tokens", "tokens_per_second", "engine_load_seconds", "ready", "tier_name", "cut_point", "target_share", "window_share", "spilled_out", "spilled_in", "feedback")
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    TIER_NAME_FIELD_NUMBER: _ClassVar[int]
    CUT_POINT_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHARE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    SPILLED_OUT_FIELD_NUMBER: _ClassVar[int]
    SPILLED_IN_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    model: str
    requests: int
    share: float
    mean_latency_ms: float
    p95_latency_ms: float
    mean_ttft_ms: float
    completion_tokens: int
    tokens_per_second: float
    engine_load_seconds: float
    ready: bool
    tier_name: str
    cut_point: float
    target_share: float
    window_share: float
    spilled_out: int
    spilled_in: int
    feedback: int
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., share: _Optional[float] = ..., mean_latency_ms: _Optional[float] = ..., p95_latency_ms: _Optional[float] = ..., mean_ttft_ms: _Optional[float] = ..., completion_tokens: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., engine_load_seconds: _Optional[float] = ..., ready: _Optional[bool] = ..., tier_name: _Optional[str] = ..., cut_point: _Optional[float] = ..., target_share: _Optional[float] = ..., window_share: _Optional[float] = ..., spilled_out: _Optional[int] = ..., spilled_in: _Optional[int] = ..., feedback: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("uptime_seconds", "total_requests", "completed_generations", "large_share", "tiers", "requests_by_code", "summary", "cache_lookups", "exact_hit_rate", "semantic_hit_rate", "routing_window", "sessions", "session_pins", "session_escalations", "session_expiries", "cost", "cost_if_most_capable", "saved_share", "adapter", "callers")
    class RequestsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    LARGE_SHARE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    CACHE_LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_PINS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COST_IF_MOST_CAPABLE_FIELD_NUMBER: _ClassVar[int]
    SAVED_SHARE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CALLERS_FIELD_NUMBER: _ClassVar[int]
    uptime_seconds: float
    total_requests: int
    completed_generations: int
    large_share: float
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    requests_by_code: _containers.ScalarMap[str, int]
    summary: str
    cache_lookups: int
    exact_hit_rate: float
    semantic_hit_rate: float
    routing_window: int
    sessions: int
    session_pins: int
    session_escalations: int
    session_expiries: int
    cost: float
    cost_if_most_capable: float
    saved_share: float
    adapter: AdapterStats
    callers: _containers.RepeatedCompositeFieldContainer[CallerStats]
    def __init__(self, uptime_seconds: _Optional[float] = ..., total_requests: _Optional[int] = ..., completed_generations: _Optional[int] = ..., large_share: _Optional[float] = ..., tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., requests_by_code: _Optional[_Mapping[str, int]] = ..., summary: _Optional[str] = ..., cache_lookups: _Optional[int] = ..., exact_hit_rate: _Optional[float] = ..., semantic_hit_rate: _Optional[float] = ..., routing_window: _Optional[int] = ..., sessions: _Optional[int] = ..., session_pins: _Optional[int] = ..., session_escalations: _Optional[int] = ..., session_expiries: _Optional[int] = ..., cost: _Optional[float] = ..., cost_if_most_capable: _Optional[float] = ..., saved_share: _Optional[float] = ..., adapter: _Optional[_Union[AdapterStats, _Mapping]] = ..., callers: _Optional[_Iterable[_Union[CallerStats, _Mapping]]] = ...) -> None: ...

class CallerStats(_message.Message):
    __slots__ = ("caller", "requests", "tokens", "cost", "rejected", "in_flight", "spent_today", "requests_last_minute", "tokens_last_minute")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SPENT_TODAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    caller: str
    requests: int
    tokens: int
    cost: float
    rejected: int
    in_flight: int
    spent_today: float
    requests_last_minute: float
    tokens_last_minute: float
    def __init__(self, caller: _Optional[str] = ..., requests: _Optional[int] = ..., tokens: _Optional[int] = ..., cost: _Optional[float] = ..., rejected: _Optional[int] = ..., in_flight: _Optional[int] = ..., spent_today: _Optional[float] = ..., requests_last_minute: _Optional[float] = ..., tokens_last_minute: _Optional[float] = ...) -> None: ...

class AdapterStats(_message.Message):
    __slots__ = ("enabled", "current", "previous", "generation", "outcomes", "held_out_apgr", "prior_held_out_apgr", "fits_adopted", "fits_refused", "fits_failed", "pending_outcomes", "fitting", "last_fit")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_APGR_FIELD_NUMBER: _ClassVar[int]
    PRIOR_HELD_OUT_APGR_FIELD_NUMBER: _ClassVar[int]
    FITS_ADOPTED_FIELD_NUMBER: _ClassVar[int]
    FITS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    FITS_FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    FITTING_FIELD_NUMBER: _ClassVar[int]
    LAST_FIT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    current: str
    previous: str
    generation: int
    outcomes: int
    held_out_apgr: float
    prior_held_out_apgr: float
    fits_adopted: int
    fits_refused: int
    fits_failed: int
    pending_outcomes: int
    fitting: bool
    last_fit: str
    def __init__(self, enabled: _Optional[bool] = ..., current: _Optional[str] = ..., previous: _Optional[str] = ..., generation: _Optional[int] = ..., outcomes: _Optional[int] = ..., held_out_apgr: _Optional[float] = ..., prior_held_out_apgr: _Optional[float] = ..., fits_adopted: _Optional[int] = ..., fits_refused: _Optional[int] = ..., fits_failed: _Optional[int] = ..., pending_outcomes: _Optional[int] = ..., fitting: _Optional[bool] = ..., last_fit: _Optional[str] = ...) -> None: ...

class RevertAdapterRequest(_message.Message):
    __slots__ = ("to",)
    TO_FIELD_NUMBER: _ClassVar[int]
    to: str
    def __init__(self, to: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "rating", "correct", "label")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rating: int
    correct: bool
    label: str
    def __init__(self, request_id: _Optional[str] = ..., rating: _Optional[int] = ..., correct: _Optional[bool] = ..., label: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("request_id", "tier_name", "p_complex")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_NAME_FIELD_NUMBER: _ClassVar[int]
    P_COMPLEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier_name: str
    p_complex: float
    def __init__(self, request_id: _Optional[str] = ..., tier_name: _Optional[str] = ..., p_complex: _Optional[float] = ...) -> None: ...
