"""One call's outcome, the same for every front door (gRPC, HTTP).

A front door parses its request, then runs the call inside `Calls.track`,
which owns the rest: the request id (the caller's, checked, or a new one),
the mapping of what went wrong to a status name (a RouterError's own; any
other exception INTERNAL with a generic message naming the request id, the
details to the log only), the admission rejections, and counting the call
once (requests, seconds, errors, GetStats' status counts). The front door
only renders the outcome: grpc aborts with it, HTTP writes an error body.

No grpc and no aiohttp here: a third front door needs only its own parsing
and encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import ResourceExhausted, RouterError
from ..observe.metrics import RouterMetrics
from ..observe.stats import Stats
from ..types import Decision
from ..validation import check_request_id, valid_request_id

log = logging.getLogger("triage.calls")


@dataclass(frozen=True)
class Failure:
    """What the caller is told: a status name and a message safe to show."""

    status: str
    message: str
    field: str | None = None
    retry_after_ms: int | None = None
    http_status: int | None = None  # when HTTP has a closer status than the gRPC code's (413)


@dataclass
class Call:
    """One call on its way through a front door."""

    rpc: str
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    tier: str = ""
    reason: str = ""
    code: str = "OK"
    failure: Failure | None = None  # set when the call failed; the front door renders it

    def decided(self, decision: Decision) -> None:
        self.tier, self.reason = decision.tier, decision.reason

    def check_id(self) -> None:
        """INVALID_ARGUMENT for a caller's id that is too long or holds
        what a log line must not (the front door's first step in `track`)."""
        check_request_id(self.request_id)

    def shown_id(self) -> str:
        return self.request_id if valid_request_id(self.request_id) else "(invalid id)"


def failure_of(exc: RouterError) -> Failure:
    return Failure(exc.status, exc.message, getattr(exc, "field", None), getattr(exc, "retry_after_ms", None),
                   getattr(exc, "http_status", None))


class Calls:
    """Counts every call's outcome once, for every front door."""

    def __init__(self, metrics: RouterMetrics, stats: Stats):
        self.metrics = metrics
        self.stats = stats
        self._series: dict[tuple[str, str, str, str], tuple] = {}  # by labels: looked up once, not per call

    @contextlib.contextmanager
    def track(self, rpc: str, request_id: str | None, *, cancelled_as: Callable[[BaseException], str] = lambda exc: "CANCELLED",
              passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[Call]:
        """Run a call. A RouterError or an unexpected exception is taken
        here and left in `call.failure` (the block ends, the front door
        renders it). A cancellation (the caller went away, or its deadline
        passed: `cancelled_as` says which) and the `passthrough` exceptions
        go on unchanged: the cancellation must reach the engine."""
        call = Call(rpc, request_id or uuid.uuid4().hex)
        try:
            yield call
        except RouterError as exc:
            call.code, call.failure = exc.status, failure_of(exc)
            if isinstance(exc, ResourceExhausted):
                self.metrics.admission_rejections.labels(exc.scope or "router").inc()
        except passthrough:
            raise
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            call.code = cancelled_as(exc)
            raise
        except Exception:
            call.code = "INTERNAL"
            log.exception("request %s failed", call.shown_id())
            call.failure = Failure("INTERNAL", f"internal error (request {call.shown_id()})")
        finally:
            self.count(call)

    def count(self, call: Call) -> None:
        """The call's outcome, counted once."""
        key = (call.rpc, call.tier, call.reason, call.code)
        series = self._series.get(key)
        if series is None:  # every label is from a bounded set, so this stays small
            m = self.metrics
            series = self._series[key] = (m.requests.labels(*key), m.request_seconds.labels(call.rpc, call.tier, call.code),
                                          m.errors.labels(call.code) if call.code != "OK" else None)
        requests, seconds, errors = series
        requests.inc()
        seconds.observe(time.perf_counter() - call.started)
        if errors is not None:
            errors.inc()
        self.stats.record_status(call.code)
