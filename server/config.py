"""Typed, frozen configuration, loaded once in __main__ and passed down.

A profile is a YAML file under config/. Unknown keys are errors (a typo must
not silently fall back to a default). Relative paths are resolved against the
folder that holds the config file, so a profile works from any directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from store.db import dialect_of, sqlite_path

BACKENDS = ("in_process", "remote", "smg")


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key."""



@dataclass(frozen=True)
class Range:
    """A field's allowed values, declared on the field (`bounded`) and
    checked once, by `_build`, for every profile section."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
        return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"


def bounded(default, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, integer: bool = False):
    """A field whose range is part of its declaration: one place for its
    meaning, default and allowed values."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, integer)})

@dataclass(frozen=True)
class SamplingDefaults:
    """What a request gets for every sampling value it leaves unset."""

    temperature: float = bounded(0.0, 0.0, 2.0)  # greedy unless the request says otherwise
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    repetition_penalty: float = 1.0
    max_tokens: int = 256  # default when the request does not set one
    max_tokens_cap: int = 1024  # a request asking for more is refused
    stop: tuple[str, ...] = ()  # always added to the request's own stops


@dataclass(frozen=True)
class CostConfig:
    """A tier's price, per 1,000 tokens, in any unit (server/observe/costs.py)."""

    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0


@dataclass(frozen=True)
class TierConfig:
    name: str  # as written in the profile: "small", "large", "medium", ...
    model: str  # name reported to clients
    model_path: str  # local folder or hub id handed to vLLM
    max_model_len: int  # prompt + completion tokens
    sampling: SamplingDefaults
    cost: CostConfig = field(default_factory=CostConfig)  # what its answers cost: savings accounting
    max_in_flight: int = bounded(16, 1, integer=True)  # requests generating on this tier at once
    max_queued: int = bounded(32, 0, integer=True)  # waiting for a slot; beyond: RESOURCE_EXHAUSTED at once
    # A request whose expected wait for a slot is longer than this (or than
    # its own remaining deadline) is refused at once, with a retry hint,
    # instead of waiting for a first token that would come too late.
    max_queue_seconds: float = bounded(60.0, 0.0, lo_open=True)
    # Ceiling on one generation, applied with the caller's deadline (whichever
    # is sooner). CPU generation is slow: set it from measured numbers.
    generation_timeout_s: float = bounded(300.0, 0.0, lo_open=True)
    # Passed through to vllm.engine.arg_utils.AsyncEngineArgs unchanged
    # (quantization, enable_prefix_caching, speculative_config,
    # tensor_parallel_size, kv_cache_memory_bytes, gpu_memory_utilization, ...).
    # In-process engines only: a remote server takes its options on its own
    # command line.
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    # vLLM CPU build only: the cores this tier's engine computes on, as
    # VLLM_CPU_OMP_THREADS_BIND takes them ("0", "1", "0-1", "0,2-3"), or
    # "auto" (vLLM's choice: every physical core but one it reserves for the
    # frontend, so on 2 cores both engines land on core 0). Measured choices:
    # docs/benchmarks.md, "Cores".
    cpu_cores: str = "auto"
    # "in_process": a vLLM AsyncLLM in this process. "remote": `vllm serve`
    # instances at `replicas` (base URLs), which scale across GPUs and nodes
    # themselves; the router only balances between them. "smg": one gateway
    # (SMG in front of a worker pool, or anything speaking OpenAI chat
    # completions) at `gateway_url`, which places requests on its workers.
    backend: str = "in_process"
    replicas: tuple[str, ...] = ()
    gateway_url: str | None = None
    # Name of an environment variable holding the servers' --api-key (never the key itself).
    api_key_env: str | None = None
    # Tokens per streamed message after the first, which goes at once
    # (vLLM's own `stream_interval`, asked of the engine, and held to by the
    # router whatever the engine sends). 1: every token is a message. More:
    # fewer, larger messages, and the router's CPU per token falls about as
    # much (docs/benchmarks.md, section 12), for text that arrives in steps.
    stream_interval: int = bounded(1, 1, integer=True)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464  # 0 picks a free port; -1 disables /metrics
    # OpenAI-compatible HTTP (server/fronts/http_api.py, docs/http.md): 0 picks a
    # free port; -1 (the default) serves none.
    http_port: int = -1
    http_auto_model: str = "auto"  # the `model` that lets the classifier decide
    grace_seconds: float = 30.0  # in-flight requests get this long on SIGTERM
    warmup_prompt: str = "Say hello."
    # Router processes sharing the ports (server/workers.py): more than one
    # only when every tier is remote or smg.
    workers: int = bounded(1, 1, integer=True)
    # While the event loop is saturated, a stream that has sent text waits
    # up to this long before its next message, so what its engine says
    # meanwhile goes merged (server/observe/pace.py); 0: every token at once, always.
    busy_merge_ms: float = bounded(50.0, 0.0, 1000.0)


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds that stop abuse before any tokenisation work, and the gRPC
    server's own limits."""

    max_messages: int = 64
    max_message_chars: int = 32_000
    max_total_chars: int = 64_000
    max_in_flight: int = 32  # over all tiers
    max_queued: int = 64
    max_receive_message_bytes: int = 1024 * 1024
    max_concurrent_streams: int = 256  # per HTTP/2 connection
    # With callers configured: slots of each tier that no one caller may
    # hold, so another caller's request starts at once instead of waiting
    # for a flood's answers to end (server/tiers/admission.py).
    caller_headroom: int = bounded(1, 0, integer=True)
    keepalive_time_s: float = 60.0  # pings keep long CPU streams alive through proxies
    keepalive_timeout_s: float = 20.0


@dataclass(frozen=True)
class SecurityConfig:
    """Secrets never live here: only where to find them."""

    token_file: str | None = None  # one bearer token per line
    token_env: str | None = None  # name of an environment variable with comma-separated tokens
    health_open: bool = True  # health checking answers without a token
    tls_cert: str | None = None  # server certificate chain (PEM)
    tls_key: str | None = None  # its private key (PEM)
    tls_client_ca: str | None = None  # set: mutual TLS, clients must present a certificate from this CA


@dataclass(frozen=True)
class ResilienceConfig:
    failure_threshold: int = 3  # consecutive engine failures that open a tier's circuit
    cooldown_s: float = 15.0  # open circuit: wait this long, then let one probe through
    fallback: bool = True  # a tier that cannot serve hands requests to the other, marked degraded
    restart_dead_engines: bool = True  # a dead in-process engine is started again
    health_interval_s: float = 1.0


@dataclass(frozen=True)
class ClassifierConfig:
    path: str | None = None  # None: the artifact committed in classifier/artifacts
    # Two tiers: one threshold; None: the artifact's calibrated threshold.
    threshold: float | None = bounded(None, 0.0, 1.0)
    # More tiers: ascending p_complex cut points, one fewer than the tiers;
    # a score at or above cut_points[i] goes to tier i + 1 or beyond.
    cut_points: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CacheConfig:
    exact: bool = True
    exact_max_entries: int = 10_000
    exact_max_bytes: int = 64 * 1024 * 1024
    ttl_seconds: float | None = None  # None: entries live until evicted
    semantic: bool = True
    semantic_max_entries: int = 100_000
    semantic_threshold: float = bounded(0.95, 0.0, 1.0, lo_open=True)  # cosine similarity
    # Longer questions skip the semantic cache: past the embedding model's
    # 256-token window two prompts sharing a prefix would embed identically.
    semantic_max_chars: int = 1000
    cache_sampled: bool = False  # cache answers to non-greedy, unseeded requests too
    # True: a request the semantic cache might answer starts on its engine
    # while the question is embedded and searched (~11 ms p50 at 100k
    # entries); a hit aborts the engine request (its prefill is wasted), a
    # miss has lost nothing. False: the search first, then the engine. The
    # trade-off, measured: docs/benchmarks.md.
    semantic_overlap: bool = True


@dataclass(frozen=True)
class StoreConfig:
    """Where outcomes, recent answers, sessions and adapters are kept (store/,
    docs/deployment.md): `sqlite:///path` (a file, this process's) or
    `postgresql://user@host/db` (shared by every worker and replica; its
    password belongs in $PGPASSWORD or ~/.pgpass, not here). None: nothing
    is stored, and Feedback answers FAILED_PRECONDITION."""

    url: str | None = None
    # How long a Feedback waits for the database before answering
    # UNAVAILABLE, and a shared session lookup before routing without it.
    timeout_s: float = bounded(2.0, 0.0, lo_open=True)
    session_timeout_s: float = bounded(0.05, 0.0, lo_open=True)
    buffer: int = bounded(10_000, 1, integer=True)  # writes held while the database is unreachable; the oldest go first beyond this
    connections: int = bounded(4, 1, 64, integer=True)  # per process (PostgreSQL)


@dataclass(frozen=True)
class FeedbackConfig:
    """Outcomes reported for answers (the Feedback RPC), kept in the store
    (store.url) for re-fitting the routing."""
    max_rows: int = bounded(1_000_000, 1, integer=True)  # the oldest go first beyond this
    # Feedback is taken for the most recent answers only: this many, at most this old.
    remember_answers: int = bounded(100_000, 1, integer=True)
    remember_seconds: float = bounded(24 * 3600.0, 0.0, lo_open=True)
    keep_text: bool = False  # store the question's text with its outcome (off: score, tier and model only)


@dataclass(frozen=True)
class SpillConfig:
    """Spill under load: a request near a cut point whose tier cannot start
    it soon goes to the neighbouring tier that can (docs/routing.md)."""

    enabled: bool = True
    up: bool = True  # to the more capable neighbour: better quality, more cost
    down: bool = False  # to the cheaper one: a complex question may get a weaker answer
    margin: float = bounded(0.1, 0.0, 1.0)  # how far from the cut point (in p_complex) a score may lie to move
    # The chosen tier is "too busy" when a request would wait longer than this
    # for a slot (its expected wait, as admission estimates it) or its queue
    # is full; the neighbour must be able to start it sooner than this.
    queue_seconds: float = bounded(1.0, 0.0)


@dataclass(frozen=True)
class SessionConfig:
    """Session affinity (server/routing/sessions.py): a conversation stays on the
    most capable tier it has reached until it has been idle this long."""

    enabled: bool = True
    idle_seconds: float = bounded(1800.0, 0.0, lo_open=True)
    max_sessions: int = bounded(100_000, 1, integer=True)  # the least recently seen go first beyond this


@dataclass(frozen=True)
class ShadowConfig:
    """Shadow evaluation (server/routing/shadow.py): a sampled share of answered
    requests is asked again of a neighbouring tier when it is idle, and the
    comparison is stored as an outcome (docs/routing.md)."""

    enabled: bool = False
    sample: float = bounded(0.05, 0.0, 1.0)  # of answered (generated, not degraded) requests
    similarity: float = bounded(0.85, 0.0, 1.0)  # the default grader's cosine similarity for "the same answer"


@dataclass(frozen=True)
class AdaptConfig:
    """The adapter loop (server/routing/adapting.py): after every `every` new
    outcomes of the cheapest tier in the feedback store, an adapter is
    fitted from them in a child process (`python -m classifier adapt`) and
    adopted only if it ranks the newest quarter better than the prior
    (docs/routing.md). Needs store.url and feedback.keep_text."""

    enabled: bool = False
    every: int = bounded(500, 1, integer=True)  # new outcomes of the cheapest tier between two fits
    min_outcomes: int = bounded(200, 20, integer=True)  # fewest outcomes with text before the first fit
    # Adopted adapters live in the store (every process routes with the one
    # it names); this folder holds them unpacked. None: `adapters/` beside an
    # SQLite store, or triage-adapters in the system's temporary folder.
    dir: str | None = None
    poll_s: float = bounded(10.0, 0.0, lo_open=True)  # how often a process looks for an adapter another one adopted
    fit_timeout_s: float = bounded(600.0, 0.0, lo_open=True)  # a fit that takes longer is stopped and counted as failed


@dataclass(frozen=True)
class RoutingConfig:
    """Adaptive routing over the classifier's score (docs/routing.md)."""

    # Tier -> share of the requests the classifier decides that should go to
    # it, for every tier above the cheapest; empty: the cut points stay fixed.
    target_share: Mapping[str, float] = field(default_factory=dict)
    # The sliding window the share is held over: the last N decisions, or
    # the last S seconds (set one; window_seconds wins when both are set).
    window_requests: int = bounded(1000, 10, integer=True)
    window_seconds: float | None = bounded(None, 0.0, lo_open=True)
    # The share drifting from the target is brought back within this fraction
    # of the window: smaller tracks the target tighter but follows the
    # scores' order less closely (docs/routing.md has the measured trade).
    correction: float = bounded(0.0625, 0.0, 1.0, lo_open=True)
    min_samples: int = bounded(100, 1, integer=True)  # decisions in the window before the cut points move
    spill: SpillConfig = field(default_factory=SpillConfig)
    # User turns the score is carried along (server/routing/conversation.py): a
    # follow-up inherits the weight of the turns before it. 1: the last
    # message alone.
    conversation_turns: int = bounded(4, 1, integer=True)
    session: SessionConfig = field(default_factory=SessionConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry traces (server/observe/tracing.py): off unless an endpoint is set
    (here, or OTEL_EXPORTER_OTLP_ENDPOINT in the environment)."""

    otlp_endpoint: str | None = None  # OTLP over HTTP, e.g. http://otel-collector:4318
    sample_ratio: float = bounded(1.0, 0.0, 1.0)  # of requests without a sampled parent
    service_name: str = "triage"


@dataclass(frozen=True)
class EmbeddingConfig:
    """The sentence-embedding model (semantic cache, retrieval)."""
    threads: int = bounded(1, 1, integer=True)  # ONNX Runtime threads for one embedding


@dataclass(frozen=True)
class RetrievalConfig:
    index: str | None = None  # folder written by `python -m server index`; None: retrieval off
    top_k: int = bounded(10, 1, integer=True)
    max_chunk_chars: int = bounded(800, 50, integer=True)  # each retrieved chunk is cut to this in the prompt
    tiers: tuple[str, ...] = ()  # tiers that retrieve unless the request says otherwise


OTHER_CALLER = "other"  # every request whose credential names no configured caller


@dataclass(frozen=True)
class CallerConfig:
    """One caller (server/callers/): named by its credential, a bearer token
    mapped to the name in security.token_file / token_env ("name:token"),
    or a mutual-TLS client certificate's subject. Every limit is optional."""

    name: str
    weight: float = bounded(1.0, 0.0, lo_open=True)  # its share of a contended tier's slots, against the others'
    requests_per_minute: float | None = bounded(None, 0.0, lo_open=True)
    tokens_per_minute: float | None = bounded(None, 0.0, lo_open=True)  # prompt + completion tokens
    concurrent: int | None = bounded(None, 0, lo_open=True, integer=True)  # requests generating at once
    budget_per_day: float | None = bounded(None, 0.0, lo_open=True)  # in the tiers' cost unit, per UTC day
    tls_subject: str | None = None  # e.g. "CN=batch-jobs,O=example": a client certificate's subject names this caller


@dataclass(frozen=True)
class Config:
    profile: str
    server: ServerConfig
    classifier: ClassifierConfig
    tiers: Mapping[str, TierConfig]  # in the profile's order: cheapest first
    cache: CacheConfig = field(default_factory=CacheConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    callers: tuple[CallerConfig, ...] = ()  # none: every caller is the same, as before callers existed

    def with_ports(self, port: int | None, metrics_port: int | None, host: str | None = None, http_port: int | None = None) -> "Config":
        server = self.server if host is None else dataclasses.replace(self.server, host=host)
        if http_port is not None:
            server = dataclasses.replace(server, http_port=http_port)
        if port is not None:
            server = dataclasses.replace(server, port=port)
        if metrics_port is not None:
            server = dataclasses.replace(server, metrics_port=metrics_port)
        return dataclasses.replace(self, server=server)


def _build(cls, raw: Any, where: str, **extra):
    """`cls` from a profile section, every key known and every bounded
    field (`bounded`) within its range."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        built = cls(**raw, **extra)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for f in dataclasses.fields(cls):
        bounds = f.metadata.get("range")
        value = getattr(built, f.name)
        if bounds is not None and value is not None and not bounds.holds(value):
            raise ConfigError(f"{where}.{f.name} must be {bounds}, got {value!r}")
    return built


def _resolve_path(value: str, base: Path) -> str:
    """Expand ~ and $VARS; make relative local paths absolute against `base`.

    A value that does not exist locally and looks like a hub id (org/name) is
    kept as it is, for the GPU profile.
    """
    expanded = os.path.expanduser(os.path.expandvars(value))
    candidate = Path(expanded)
    if not candidate.is_absolute():
        local = (base / candidate).resolve()
        if local.exists() or expanded.startswith("."):
            return str(local)
    return expanded


def _tier(name: str, raw: Any, base: Path) -> TierConfig:
    where = f"tiers.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    raw = dict(raw)
    sampling_raw = dict(raw.pop("sampling", None) or {})
    if "stop" in sampling_raw:
        sampling_raw["stop"] = tuple(sampling_raw["stop"] or ())
    sampling = _build(SamplingDefaults, sampling_raw, f"{where}.sampling")
    cost = _build(CostConfig, raw.pop("cost", None), f"{where}.cost")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf") for v in vars(cost).values()):
        raise ConfigError(f"{where}.cost: prices are numbers >= 0 per 1,000 tokens, got {vars(cost)}")
    if "model_path" not in raw and "model" in raw:
        raw["model_path"] = raw["model"]
    if "model_path" in raw:
        raw["model_path"] = _resolve_path(str(raw["model_path"]), base)
    raw["engine_args"] = dict(raw.get("engine_args") or {})
    if "cpu_cores" in raw:  # `cpu_cores: 0` is read as a number
        raw["cpu_cores"] = str(raw["cpu_cores"])
    if "replicas" in raw:
        raw["replicas"] = tuple(str(url).rstrip("/") for url in raw["replicas"] or ())
    if raw.get("gateway_url"):
        raw["gateway_url"] = str(raw["gateway_url"]).rstrip("/")
    tier = _build(TierConfig, raw, where, name=name, sampling=sampling, cost=cost)
    _check_tier(tier, where)
    # A local folder must be there now, not fail an engine start later (a
    # copied profile's relative paths point elsewhere). A hub id stays as
    # written, for the GPU profile.
    if tier.backend == "in_process" and os.path.isabs(tier.model_path) and not Path(tier.model_path).exists():
        raise ConfigError(f"{where}.model_path: {tier.model_path} does not exist (run `make models`, or fix the path; "
                          f"relative paths are taken from the config file's folder)")
    return tier


def _check_tier(tier: TierConfig, where: str) -> None:
    s = tier.sampling
    if not re.fullmatch(r"auto|nobind|\d+(-\d+)?(,\d+(-\d+)?)*", tier.cpu_cores):
        raise ConfigError(f"{where}.cpu_cores: {tier.cpu_cores!r} is not auto, nobind or a core list such as 0, 1, 0-1")
    if tier.max_model_len < 16:
        raise ConfigError(f"{where}.max_model_len must be at least 16")
    if not 1 <= s.max_tokens <= s.max_tokens_cap:
        raise ConfigError(f"{where}.sampling.max_tokens must be in [1, max_tokens_cap]")
    if s.max_tokens_cap >= tier.max_model_len:
        raise ConfigError(f"{where}.sampling.max_tokens_cap must be below max_model_len")
    for key in ("model", "max_model_len"):
        if key in tier.engine_args:
            raise ConfigError(f"{where}.engine_args.{key}: set it on the tier, not in engine_args")
    if tier.backend not in BACKENDS:
        raise ConfigError(f"{where}.backend must be one of {list(BACKENDS)}, got {tier.backend!r}")
    if tier.backend == "remote":
        if not tier.replicas:
            raise ConfigError(f"{where}.replicas: a remote tier needs at least one `vllm serve` URL")
        bad = [u for u in tier.replicas if not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", u)]
        if bad:
            raise ConfigError(f"{where}.replicas: not an http(s) base URL: {bad}")
        if len(set(tier.replicas)) != len(tier.replicas):
            raise ConfigError(f"{where}.replicas: listed twice: {sorted({u for u in tier.replicas if tier.replicas.count(u) > 1})}")
        if tier.engine_args:
            raise ConfigError(f"{where}.engine_args: a remote tier's engine options belong on its `vllm serve` command line")
    elif tier.replicas:
        raise ConfigError(f"{where}.replicas: only a remote tier has replicas (set backend: remote)")
    if tier.backend == "smg":
        if not tier.gateway_url or not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", tier.gateway_url):
            raise ConfigError(f"{where}.gateway_url: an smg tier needs its gateway's http(s) base URL, got {tier.gateway_url!r}")
        if tier.engine_args:
            raise ConfigError(f"{where}.engine_args: an smg tier's engine options belong on its workers' command lines")
    elif tier.gateway_url:
        raise ConfigError(f"{where}.gateway_url: only an smg tier has a gateway (set backend: smg)")


def _check_adapt(routing: RoutingConfig, store: StoreConfig, feedback: FeedbackConfig, server: ServerConfig, base: Path) -> RoutingConfig:
    """routing.adapt reads the question texts the store keeps; several
    processes share adapters only through a shared store."""
    adapt = routing.adapt
    if not adapt.enabled:
        return routing
    if not store.url or not feedback.keep_text:
        raise ConfigError("routing.adapt learns from the store's question texts: set store.url and feedback.keep_text: true")
    if server.workers > 1 and dialect_of(store.url) != "postgresql":
        raise ConfigError("routing.adapt with server.workers > 1 needs a shared store: set store.url to a postgresql:// URL")
    if adapt.dir:
        folder = _resolve_path(adapt.dir, base)
    elif dialect_of(store.url) == "sqlite":
        folder = str(sqlite_path(store.url).parent / "adapters")
    else:
        folder = str(Path(tempfile.gettempdir()) / "triage-adapters")
    return dataclasses.replace(routing, adapt=dataclasses.replace(adapt, dir=folder))


def _routing(raw: Any, tier_names: Sequence[str]) -> RoutingConfig:
    raw = dict(raw or {})
    spill = _build(SpillConfig, raw.pop("spill", None), "routing.spill")
    session = _build(SessionConfig, raw.pop("session", None), "routing.session")
    shadow = _build(ShadowConfig, raw.pop("shadow", None), "routing.shadow")
    adapt = _build(AdaptConfig, raw.pop("adapt", None), "routing.adapt")
    if raw.get("target_share") is None:
        raw["target_share"] = {}
    if not isinstance(raw["target_share"], dict):
        raw["target_share"] = {"?": raw["target_share"]}  # reported below, naming the key
    raw["target_share"] = dict(raw["target_share"])
    routing = _build(RoutingConfig, raw, "routing", spill=spill, session=session, shadow=shadow, adapt=adapt)
    targets = routing.target_share
    if targets:
        above = list(tier_names[1:])
        unknown = sorted(set(targets) - set(above))
        if unknown:
            raise ConfigError(f"routing.target_share: {unknown} are not tiers above the cheapest ({above}); "
                              f"give a share for each of those, as a mapping such as {{{above[-1]}: 0.3}}")
        missing = [t for t in above if t not in targets]
        if missing:
            raise ConfigError(f"routing.target_share: every tier above the cheapest needs a share; missing {missing}")
        bad = {t: v for t, v in targets.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0}
        if bad:
            raise ConfigError(f"routing.target_share: shares are numbers in [0, 1], got {bad}")
        if sum(targets.values()) > 1.0 + 1e-9:
            raise ConfigError(f"routing.target_share: the shares add up to {sum(targets.values()):g}, more than 1")
        routing = dataclasses.replace(routing, target_share={t: float(targets[t]) for t in above})
    return routing


def _classifier(raw: Any, n_tiers: int, base: Path) -> ClassifierConfig:
    raw = dict(raw or {})
    if raw.get("cut_points") is not None:
        raw["cut_points"] = tuple(float(c) for c in raw["cut_points"])
    classifier = _build(ClassifierConfig, raw, "classifier")
    if classifier.path:
        classifier = dataclasses.replace(classifier, path=_resolve_path(classifier.path, base))
        if not Path(classifier.path).exists():
            raise ConfigError(f"classifier.path: {classifier.path} does not exist")
    cuts = classifier.cut_points
    if cuts is not None:
        if classifier.threshold is not None:
            raise ConfigError("classifier: set threshold (two tiers) or cut_points, not both")
        if len(cuts) != n_tiers - 1:
            raise ConfigError(f"classifier.cut_points: {n_tiers} tiers need {n_tiers - 1} cut points, got {len(cuts)}")
        if not all(0.0 <= c <= 1.0 for c in cuts) or any(a >= b for a, b in zip(cuts, cuts[1:])):
            raise ConfigError(f"classifier.cut_points must ascend strictly within [0, 1], got {list(cuts)}")
    elif n_tiers > 2:
        raise ConfigError(f"classifier.cut_points: {n_tiers} tiers need {n_tiers - 1} ascending cut points")
    return classifier


# Keys whose values are paths: a `--set` value for one is taken relative to
# the current directory (where the user typed it), not the config's folder.
PATH_KEYS = {"model_path", "index", "path", "token_file", "tls_cert", "tls_key", "tls_client_ca"}


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """`section.key=value` settings over the file's (the value is YAML:
    `retrieval.top_k=5`, `retrieval.index=./my-index`, `cache.semantic=false`)."""
    for item in overrides:
        key, sep, value_text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: not a YAML value: {exc}") from None
        if parts[-1] in PATH_KEYS and isinstance(value, str) and not os.path.isabs(os.path.expanduser(value)):
            local = Path.cwd() / value
            if local.exists() or value.startswith("."):
                value = str(local.resolve())
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    path = Path(path)
    raw = _read(path, overrides)
    base = path.parent.resolve()
    tiers_raw = raw.get("tiers") or {}
    if not isinstance(tiers_raw, dict) or len(tiers_raw) < 2:
        raise ConfigError(f"{path}: tiers: at least two, as a mapping from name to tier, cheapest first")
    bad_names = [n for n in tiers_raw if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", str(n))]
    if bad_names:
        raise ConfigError(f"tiers: names are lowercase letters, digits and _ (they are metric labels), got {bad_names}")
    cache = _build(CacheConfig, raw.get("cache"), "cache")
    embedding = _build(EmbeddingConfig, raw.get("embedding"), "embedding")
    feedback = _build(FeedbackConfig, _moved_feedback_path(raw.get("feedback")), "feedback")
    store = _store(raw.get("store"), base)
    server = _build(ServerConfig, raw.get("server"), "server")
    tracing = _build(TracingConfig, raw.get("tracing"), "tracing")
    return Config(
        tracing=tracing,
        routing=_check_adapt(_routing(raw.get("routing"), list(tiers_raw)), store, feedback, server, base),
        store=store,
        feedback=feedback,
        limits=_build(LimitsConfig, raw.get("limits"), "limits"),
        security=_security(raw.get("security"), base),
        resilience=_build(ResilienceConfig, raw.get("resilience"), "resilience"),
        cache=cache,
        retrieval=_retrieval(raw.get("retrieval"), tiers_raw, base),
        embedding=embedding,
        profile=str(raw.get("profile") or path.stem),
        server=server,
        classifier=_classifier(raw.get("classifier"), len(tiers_raw), base),
        tiers={name: _tier(name, tier, base) for name, tier in tiers_raw.items()},
        callers=_callers(raw.get("callers")),
    )


def _callers(raw: Any) -> tuple[CallerConfig, ...]:
    """`callers:` is a list, so a name given twice is seen (a mapping would
    silently keep the last)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"callers: expected a list of callers (each with a name), got {type(raw).__name__}")
    callers, seen = [], set()
    for i, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"callers[{i}]" + (f" ({name})" if isinstance(name, str) else "")
        caller = _build(CallerConfig, entry, where)
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ConfigError(f"{where}.name: lowercase letters, digits, _ and - (a metric label), at most 32, got {name!r}")
        if name == OTHER_CALLER:
            raise ConfigError(f"{where}.name: {OTHER_CALLER!r} is reserved for requests that name no caller")
        if name in seen:
            raise ConfigError(f"{where}.name: the caller {name!r} is given twice")
        seen.add(name)
        callers.append(caller)
    subjects = [c.tls_subject for c in callers if c.tls_subject]
    twice = sorted({s for s in subjects if subjects.count(s) > 1})
    if twice:
        raise ConfigError(f"callers: tls_subject {twice[0]!r} names two callers")
    return tuple(callers)


def _read(path: Path, overrides: Sequence[str]) -> dict:
    """The profile's mapping with `--set` overrides applied; its top-level
    keys are Config's fields (derived, never listed by hand)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides)
    unknown = set(raw) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
    return raw


def _retrieval(raw: Any, tiers_raw: Mapping, base: Path) -> RetrievalConfig:
    raw = dict(raw or {})
    if "tiers" in raw:
        raw["tiers"] = tuple(raw["tiers"] or ())
    retrieval = _build(RetrievalConfig, raw, "retrieval")
    if retrieval.index:
        retrieval = dataclasses.replace(retrieval, index=_resolve_path(retrieval.index, base))
    if set(retrieval.tiers) - set(tiers_raw):
        raise ConfigError(f"retrieval.tiers: unknown tier(s) {sorted(set(retrieval.tiers) - set(tiers_raw))}")
    return retrieval


def _security(raw: Any, base: Path) -> SecurityConfig:
    security = _build(SecurityConfig, raw, "security")
    files = ("token_file", "tls_cert", "tls_key", "tls_client_ca")
    security = dataclasses.replace(security, **{k: _resolve_path(getattr(security, k), base) for k in files if getattr(security, k)})
    if bool(security.tls_cert) != bool(security.tls_key):
        raise ConfigError("security.tls_cert and security.tls_key go together")
    if security.tls_client_ca and not security.tls_cert:
        raise ConfigError("security.tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    return security


def _moved_feedback_path(raw: Any) -> Any:
    if isinstance(raw, dict) and raw.get("path"):
        raise ConfigError(f"feedback.path: the store moved to store.url; set store.url: sqlite:///{raw['path']}")
    return {k: v for k, v in raw.items() if k != "path"} if isinstance(raw, dict) else raw


def _store(raw: Any, base: Path) -> StoreConfig:
    """A relative SQLite path is the profile's, like every other path."""
    store = _build(StoreConfig, raw, "store")
    if not store.url:
        return store
    try:
        dialect = dialect_of(store.url)
    except ValueError as exc:
        raise ConfigError(f"store.url: {exc}") from None
    if dialect == "sqlite":
        path = Path(_resolve_path(str(sqlite_path(store.url)), base))
        if not path.parent.is_dir():
            raise ConfigError(f"store.url: the folder of {path} does not exist")
        store = dataclasses.replace(store, url=f"sqlite:///{path}")
    return store
