"""Engines behind one small protocol, and the in-process vLLM implementation.

The router core only sees `Engine`: render a conversation to prompt tokens,
generate a stream of `EngineChunk`s, report readiness and unfinished work.
vLLM is imported when an engine starts, never at module import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any, AsyncIterator, Protocol, Sequence

from ..config import TierConfig
from ..errors import Unavailable
from .prompt import render
from ..types import ChatMessage, EffectiveSampling, EngineChunk, Prompt

log = logging.getLogger("triage.engine")


class Engine(Protocol):
    tier: str
    model: str
    max_model_len: int
    load_seconds: float
    restartable: bool  # a dead one may be started again in this process

    @property
    def ready(self) -> bool:
        """The engine can generate now (loaded and not dead; for a remote
        tier, a replica is healthy). Tier.ready is this, read by everyone."""

    async def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Apply the model's chat template: the prompt's token ids."""

    def generate(self, prompt: Prompt, sampling: EffectiveSampling, request_id: str) -> AsyncIterator[EngineChunk]:
        """Stream output; closing the iterator early aborts the request."""

    def unfinished_requests(self) -> int: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


ENGINE_SHUTDOWN_TIMEOUT_S = 1.0
CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
_ENV_LOCK = threading.Lock()


def _already_shut_down(*args, **kwargs) -> None:
    return None


def shared_memory_segments() -> set[str]:
    """The names of Python's shared-memory segments on this machine now."""
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}
    except OSError:  # no /dev/shm: nothing to account for
        return set()


def release_segments(names: set[str]) -> None:
    """Unlink the shared memory an engine's processes made (vLLM's message
    queues between its EngineCore and its worker, two an engine on the CPU
    build) once they are gone. Each queue unlinks its own only when its
    object is finalised in a process that exits normally; the workers that
    shutdown kills after ENGINE_SHUTDOWN_TIMEOUT_S never get there, and
    Python's resource tracker then unlinked them at exit with a "leaked
    shared_memory objects" warning on every stop (none when the workers
    were given 15 s, measured: they took 8.6). Unlinking through
    SharedMemory also tells the tracker they are gone."""
    from multiprocessing import shared_memory

    for name in names:
        try:
            segment = shared_memory.SharedMemory(name=name)
        except (FileNotFoundError, OSError):
            continue  # its owner cleaned it up
        segment.close()
        segment.unlink()


QUIET_ENV = "TRIAGE_VLLM_SPIN"  # "1": keep vLLM's spinning readers (to measure against: benchmarks/engine_spin.py)
QUIET_POLL_S = 0.0002  # how often a waiting reader looks at the queue instead of spinning


def quiet_message_queues() -> None:
    """A vLLM general plugin (pyproject's `vllm.general_plugins`), run in
    every vLLM process of this environment, the EngineCore and its worker
    included. On the CPU build, vLLM always splits an engine into those two
    processes (the platform forces its multiprocessing executor), and they
    talk through shared-memory queues whose reader spins on sched_yield
    for 1 s after each message before it sleeps on a socket
    (shm_broadcast.SpinCondition.wait; `busy_loop_s` has no setting).
    While a tier generates, each of its two processes then holds a core:
    one busy tier took both cores of a 2-core machine. Here a reader in
    that second instead sleeps QUIET_POLL_S between looks: at most 0.2 ms
    later per message, against the milliseconds of a CPU forward pass.
    (Sleeping on the socket at once is not an option: the writer's
    notification is a best-effort PUB message, and without the spin a
    step waited for the poll's timeout: 1.1 tokens/s instead of 18.) GPU
    builds are left alone."""
    if os.environ.get(QUIET_ENV) == "1":
        return
    from vllm.distributed.device_communicators import shm_broadcast
    from vllm.platforms import current_platform

    spin_wait = shm_broadcast.SpinCondition.wait
    if not current_platform.is_cpu() or getattr(spin_wait, "quiet", False):
        return

    def quiet_wait(self, timeout_ms: int | None = None) -> None:
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(QUIET_POLL_S)
        else:
            spin_wait(self, timeout_ms)

    quiet_wait.quiet = True
    shm_broadcast.SpinCondition.wait = quiet_wait


def build_engine_args(tier: TierConfig):
    """vLLM AsyncEngineArgs for a tier. Raises TypeError on an unknown option,
    so a typo in a profile fails when the config is checked, not on the GPU."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=tier.model_path,
        served_model_name=[tier.model],
        max_model_len=tier.max_model_len,
        **dict(tier.engine_args),
    )


def to_vllm_sampling(sampling: EffectiveSampling, stream_interval: int = 1):
    """Every value explicit, so neither vLLM's defaults (max_tokens=16) nor the
    model's generation_config.json can change what the request asked for.
    `stream_interval`: the tier's tokens per output after the first."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k > 0 else 0,
        max_tokens=sampling.max_tokens,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
        repetition_penalty=sampling.repetition_penalty,
        output_kind=RequestOutputKind.DELTA,
        stream_interval=stream_interval,
    )


def _is_resource_tracker(process) -> bool:
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except Exception:  # gone, or not ours to read: not the tracker we started
        return False


class VllmEngine:
    """One vLLM AsyncLLM in this process, serving one tier."""

    restartable = True

    def __init__(self, tier: TierConfig):
        self.tier = tier.name
        self.model = tier.model
        self.max_model_len = tier.max_model_len
        self.load_seconds = 0.0
        self._config = tier
        self._llm: Any = None
        self._tokenizer: Any = None
        self._segments: set[str] = set()  # shared memory this engine's processes made
        self.pids: list[int] = []

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def _build(self):
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine process reads its core binding from the environment it
        # is started with; engines start one at a time (and a restart under
        # the lock), so each sees its own tier's setting.
        with _ENV_LOCK:
            before = os.environ.get(CPU_BIND_ENV)
            os.environ[CPU_BIND_ENV] = self._config.cpu_cores
            try:
                return AsyncLLM.from_engine_args(build_engine_args(self._config))
            finally:
                if before is None:
                    os.environ.pop(CPU_BIND_ENV, None)
                else:
                    os.environ[CPU_BIND_ENV] = before

    async def start(self) -> None:
        import psutil

        started = time.monotonic()
        log.info("tier %s: starting vLLM engine for %s", self.tier, self.model)
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        segments_before = shared_memory_segments()
        # Importing vLLM and loading a model block for tens of seconds: do it
        # in a worker thread so health checks and UNAVAILABLE answers keep
        # flowing. vLLM starts its output handler on the first request, in
        # this event loop.
        self._llm = await asyncio.to_thread(self._build)
        self._tokenizer = self._llm.get_tokenizer()
        self.load_seconds = time.monotonic() - started
        # The engine's own processes (EngineCore, workers): what an operator
        # kills or watches for this tier. Not multiprocessing's resource
        # tracker, which the first engine's start also brings up: it is the
        # router's, shared by every engine.
        self.pids = sorted(p.pid for p in psutil.Process().children(recursive=True)
                           if p.pid not in before and not _is_resource_tracker(p))
        self._segments = shared_memory_segments() - segments_before
        log.info("tier %s: engine loaded in %.1f s (processes %s)", self.tier, self.load_seconds, self.pids)

    async def render(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._tokenizer is None:
            raise Unavailable(f"tier {self.tier} is not started")
        return Prompt(await render(self._tokenizer, messages), tuple(messages))

    async def generate(self, prompt: Prompt, sampling: EffectiveSampling, request_id: str) -> AsyncIterator[EngineChunk]:
        from vllm.inputs import TokensPrompt

        if self._llm is None or self._llm.errored:
            raise Unavailable(f"tier {self.tier} engine is not running")
        stream = self._llm.generate(
            TokensPrompt(prompt_token_ids=prompt.ids), to_vllm_sampling(sampling, self._config.stream_interval), request_id
        )
        completion_tokens = 0
        try:
            async for out in stream:
                piece = out.outputs[0]
                completion_tokens += len(piece.token_ids)
                queue_s = None
                stats = out.metrics
                if stats is not None and stats.scheduled_ts and stats.queued_ts:
                    queue_s = max(0.0, stats.scheduled_ts - stats.queued_ts)
                yield EngineChunk(
                    delta=piece.text,
                    completion_tokens=completion_tokens,
                    finished=out.finished,
                    finish_reason=piece.finish_reason if out.finished else None,
                    queue_s=queue_s,
                )
        finally:
            # Closing vLLM's generator raises GeneratorExit inside it, which
            # aborts the request in the engine (cancel, deadline, client gone).
            await stream.aclose()

    def unfinished_requests(self) -> int:
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    async def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # Stop vLLM's output handler first (no request is left by now):
            # if its engine process has to be killed below, the handler would
            # otherwise log the dead engine as an ERROR with a traceback.
            handler = getattr(llm, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
            # Blocking (it joins the engine's processes): off the event loop.
            # vLLM gives its processes 5 s after SIGTERM by default. An idle
            # CPU EngineCore leaves its loop at once, but its worker then
            # spends seconds in native teardown (torch, OpenBLAS): after 1 s
            # they are killed, with nothing of theirs left to lose.
            await asyncio.to_thread(llm.shutdown, ENGINE_SHUTDOWN_TIMEOUT_S)
            release_segments(self._segments)
            self._segments = set()
            # AsyncLLM.__del__ shuts down again when the object is finalised,
            # which for this one is at interpreter exit, with vLLM's modules
            # half gone: a TypeError traceback in every stop's log. It is shut
            # down already, so its finaliser has nothing left to do.
            llm.shutdown = _already_shut_down
