"""One room per tier: its config, engine, circuit breaker, admission gate and
up/down state, and the supervisor that starts, watches, restarts and drains
the engines. Nothing outside this file touches a breaker or a gate.

Health changes are reported through a callback (the app turns them into
grpc health statuses), so this module knows nothing of grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable, Iterator, Mapping, Sequence

from .admission import Gate
from ..observe.stalls import freeze_heap, thaw_heap
from .breaker import CircuitBreaker
from ..config import OTHER_CALLER, LimitsConfig, ResilienceConfig, TierConfig
from .engine import Engine
from ..errors import ResourceExhausted, Unavailable
from ..observe.metrics import RouterMetrics
from ..types import ChatMessage, EffectiveSampling

log = logging.getLogger("triage.tiers")


class Tier:
    """A tier as the router sees it: can it serve now, a slot on it, and
    what its requests' outcomes say about its engine."""

    def __init__(self, config: TierConfig, engine: Engine, resilience: ResilienceConfig, metrics: RouterMetrics,
                 weights: Mapping[str, float] | None = None, headroom: int = 0):
        """`weights`: each configured caller's share of contended slots (none: one first-come queue)."""
        self.config = config
        self.engine = engine
        self.name = config.name
        self.model = config.model
        self.breaker = CircuitBreaker(resilience.failure_threshold, resilience.cooldown_s)
        self.gate = Gate(f"tier {config.name}", config.max_in_flight, config.max_queued, weights=weights, headroom=headroom)
        # The supervisor's last view of the engine (it notices changes by
        # comparing this with `ready`); everything else reads `ready`.
        self.serving = False
        self._ready_gauge = metrics.engine_ready.labels(config.name, engine.model)
        self._ready_gauge.set(0)
        metrics.engine_unfinished.labels(config.name).set_function(engine.unfinished_requests)
        metrics.queue_depth.labels(config.name).set_function(lambda: self.gate.waiting)
        self._expected_wait_gauge = metrics.queue_expected_wait.labels(config.name)
        # Seconds a request holds a slot, smoothed over recent ones: with
        # max_in_flight slots, the queue drains at max_in_flight / this.
        self.slot_seconds: float | None = None

    @property
    def ready(self) -> bool:
        """The one answer to "is this tier ready": its engine's own, live
        (health, ListModels, GetStats and routing all read this)."""
        return self.engine.ready

    def why_not(self) -> str | None:
        """None if the tier can take a request now, else why not. (A
        half-open breaker hands out its one probe here.)"""
        if not self.ready:
            return "engine not ready"
        if not self.breaker.allow():
            return "circuit open"
        return None

    def expected_wait(self, caller: str = OTHER_CALLER) -> float:
        """Seconds a caller's request arriving now would wait for a slot:
        nothing while one is free to it; else its place in the turns
        (admission.py) over the drain rate."""
        if self.gate.has_room(caller) or self.slot_seconds is None:
            return 0.0
        return (self.gate.ahead_of(caller) + 1) * self.slot_seconds / self.gate.max_in_flight

    def busy_reason(self, budget_s: float, caller: str = OTHER_CALLER) -> str | None:
        """None if the caller's request arriving now would start within
        `budget_s` (at once, on a slot free to it: the headroom while another
        caller floods); else why not (placement.SPILL_REASONS): its queue is
        full, or the expected wait is longer."""
        gate = self.gate
        if gate.has_room(caller):
            return None
        if gate.waiting >= gate.max_queued:
            return "queue_full"
        if self.expected_wait(caller) > budget_s:
            return "queue_wait"
        return None

    @contextlib.asynccontextmanager
    async def admit(self, remaining_s: float | None = None, caller: str = OTHER_CALLER):
        """A slot on this tier, or RESOURCE_EXHAUSTED at once when the queue
        is full or the expected wait exceeds the tier's budget or the
        caller's remaining deadline."""
        wait = self.expected_wait(caller)
        self._expected_wait_gauge.set(wait)
        budget = self.config.max_queue_seconds
        if wait > budget or (remaining_s is not None and wait > remaining_s):
            limit = f"its queue budget of {budget:g} s" if wait > budget else f"the call's remaining deadline ({remaining_s:.1f} s)"
            raise ResourceExhausted(
                f"tier {self.name}: expected wait {wait:.1f} s for a slot exceeds {limit}; retry later",
                retry_after_ms=max(1000, int(wait * 1000)), scope=self.gate.name,
            )
        async with self.gate.slot(caller):
            started = time.monotonic()
            try:
                yield
            finally:
                held = time.monotonic() - started
                self.slot_seconds = held if self.slot_seconds is None else 0.8 * self.slot_seconds + 0.2 * held

    def failure_mark(self) -> int:
        """Taken as a request starts on the engine, given back to `failed`."""
        return self.breaker.mark()

    def failed(self, mark: int | None = None) -> bool:
        """The engine failed a request (that started at `mark`). False when
        the failure belongs to an incident already counted."""
        return self.breaker.failure(mark)

    def succeeded(self) -> None:
        self.breaker.success()

    def mark_up(self) -> None:
        self.serving = True
        self.breaker.success()
        self._ready_gauge.set(1)

    def mark_down(self) -> None:
        self.serving = False
        self.breaker.trip()
        self._ready_gauge.set(0)

    def mark_stopped(self) -> None:
        self.serving = False
        self._ready_gauge.set(0)


class Tiers:
    """The tiers in order, cheapest first, with the router-wide admission
    gate, fallback order, and the engines' supervisor."""

    def __init__(self, tiers: Sequence[Tier], limits: LimitsConfig, resilience: ResilienceConfig, metrics: RouterMetrics,
                 warmup_prompt: str = "Say hello.", on_change: Callable[[], Awaitable[None]] | None = None,
                 weights: Mapping[str, float] | None = None):
        self._tiers = {t.name: t for t in tiers}
        self._order = [t.name for t in tiers]
        self.gate = Gate("router", limits.max_in_flight, limits.max_queued, weights=weights, headroom=limits.caller_headroom)
        self.resilience = resilience
        self.metrics = metrics
        self.warmup_prompt = warmup_prompt
        self.on_change = on_change or _nothing
        self.started = False  # every engine has been warm once
        self.draining = False
        # Set when draining: requests still generating after this monotonic
        # time end with UNAVAILABLE at their next token.
        self.drain_deadline: float | None = None
        self._watcher: asyncio.Task | None = None
        self._restarts: dict[str, asyncio.Task] = {}

    # -- the collection ------------------------------------------------------

    def __getitem__(self, name: str) -> Tier:
        return self._tiers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tiers

    def __iter__(self) -> Iterator[Tier]:
        return (self._tiers[n] for n in self._order)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._order)

    def why_not(self, name: str) -> str | None:
        """Why the tier cannot take a request now, or None (Tier.why_not)."""
        return self._tiers[name].why_not()

    def can_start_now(self, tier: Tier, caller: str = OTHER_CALLER) -> bool:
        """Its engine is up and a slot is free to the caller on it and
        router-wide: a request would start at once."""
        return tier.ready and tier.gate.has_room(caller) and self.gate.has_room(caller)

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down")

    def any_ready(self) -> bool:
        return any(t.ready for t in self)

    @contextlib.asynccontextmanager
    async def admit(self, tier: Tier, remaining_s: float | None = None, caller: str = OTHER_CALLER):
        """A slot on the tier, then a router-wide one, or RESOURCE_EXHAUSTED.
        In this order: a request waiting for its busy tier holds no
        router-wide slot, so a burst on one tier never keeps another tier's
        requests out."""
        async with tier.admit(remaining_s, caller), self.gate.slot(caller):
            yield

    def past_drain_deadline(self) -> bool:
        return self.drain_deadline is not None and time.monotonic() > self.drain_deadline

    # -- the supervisor ----------------------------------------------------------

    async def _bring_up(self, tier: Tier) -> None:
        engine = tier.engine
        await engine.start()
        self.metrics.engine_load_seconds.labels(tier.name, engine.model).set(engine.load_seconds)
        await warm_up(engine, self.warmup_prompt)
        tier.mark_up()
        await self.on_change()

    async def start(self) -> None:
        """Start engines one after the other (each reserves its KV cache),
        warm each up; then watch them."""
        for tier in self:
            await self._bring_up(tier)
        self.started = True
        await self.on_change()
        log.info("all tiers warm")
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Notice dead engines (vLLM marks them errored; a remote tier has no
        healthy replica), take their tier out of service, and start in-process
        ones again if configured. A remote tier comes back by itself when a
        replica is healthy again."""
        r = self.resilience
        while not self.draining:
            await asyncio.sleep(r.health_interval_s)
            for tier in self:
                if tier.name in self._restarts:
                    continue
                engine = tier.engine
                restart = r.restart_dead_engines and engine.restartable
                if tier.serving and not tier.ready:
                    log.error("tier %s: engine is dead; tier NOT_SERVING%s", tier.name, ", restarting it" if restart else "")
                    tier.mark_down()
                    await self.on_change()
                    if restart:
                        self._restarts[tier.name] = asyncio.create_task(self._restart(tier))
                elif not tier.serving and tier.ready:
                    log.warning("tier %s: engine is serving again; tier SERVING", tier.name)
                    tier.mark_up()
                    await self.on_change()

    async def _restart(self, tier: Tier) -> None:
        delay = 1.0
        try:
            while not self.draining:
                try:
                    await tier.engine.shutdown()
                    # The dead engine's objects were frozen with everything
                    # else at start-up (stalls.freeze_heap): out of the
                    # collector's reach, its reference cycles stayed, 60-80 MB
                    # of the router's memory per restart (benchmarks.soak).
                    # Collect them, and freeze again once the new one is up:
                    # two full collections, once per restart.
                    thaw_heap()
                    await self._bring_up(tier)
                    freeze_heap()
                    self.metrics.engine_restarts.labels(tier.name).inc()
                    log.warning("tier %s: engine restarted in %.1f s; tier SERVING", tier.name, tier.engine.load_seconds)
                    return
                except Exception:
                    log.exception("tier %s: engine restart failed; retrying in %.0f s", tier.name, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
        finally:
            self._restarts.pop(tier.name, None)

    async def begin_drain(self, grace: float) -> None:
        """No new requests; those still generating `grace` seconds from now
        end at their next token; stop watching and restarting."""
        self.draining = True
        self.drain_deadline = time.monotonic() + max(0.0, grace)
        for task in (self._watcher, *self._restarts.values()):
            if task is not None:
                task.cancel()
        await self.on_change()

    async def shutdown(self) -> None:
        """All engines at once: each waits for its own processes to exit."""
        await asyncio.gather(*(tier.engine.shutdown() for tier in self))
        for tier in self:
            tier.mark_stopped()


async def _nothing() -> None:
    return None


async def warm_up(engine: Engine, prompt: str) -> None:
    """One tiny greedy generation, so the first user request pays no warm-up."""
    sampling = EffectiveSampling(0.0, 1.0, 0, 4, (), None, 1.0)
    rendered = await engine.render([ChatMessage("user", prompt)])
    async for _ in engine.generate(rendered, sampling, f"warmup-{engine.tier}"):
        pass
