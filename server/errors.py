"""Errors the router core raises on purpose. Each carries the gRPC status it
becomes (by name, so this module needs no grpc import) and a message that is
safe to show a client. Anything else that escapes is INTERNAL.
"""

from __future__ import annotations


class EngineFailure(Exception):
    """An engine could not serve a request (a remote replica refused the
    connection, say). Not a client error and not a status of its own: the
    router counts it against the tier and falls back to the other tier."""


class RouterError(Exception):
    status = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(RouterError):
    """The request is wrong; the message names the field."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class PromptTooLong(InvalidArgument):
    """The prompt does not fit a tier's context: another tier's may hold it
    (placement.for_context); INVALID_ARGUMENT when none does."""

    def __init__(self, tier: str, tokens: int, max_model_len: int):
        super().__init__("messages", f"the prompt is {tokens} tokens; tier {tier} holds at most {max_model_len - 1}")
        self.tier, self.tokens = tier, tokens


class TooLarge(InvalidArgument):
    """A request body over the size limit: INVALID_ARGUMENT on gRPC (whose
    own limit answers RESOURCE_EXHAUSTED before the router sees it), 413 on
    HTTP."""

    http_status = 413


class NotFound(RouterError):
    status = "NOT_FOUND"


class Unauthenticated(RouterError):
    """Missing or wrong credentials (HTTP's bearer token; gRPC's are the
    interceptor's, auth.py)."""

    status = "UNAUTHENTICATED"


class FailedPrecondition(RouterError):
    """The server is not set up for what the request asks (e.g. no index)."""

    status = "FAILED_PRECONDITION"


class Unavailable(RouterError):
    """The engine is not started, draining, or dead."""

    status = "UNAVAILABLE"


class ResourceExhausted(RouterError):
    """Over an admission limit. The servicer sends `retry_after_ms` as the
    standard `grpc-retry-pushback-ms` trailer (and `retry-after-ms`)."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_ms: int = 1000, scope: str = ""):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
        self.scope = scope


class DeadlineExceeded(RouterError):
    """The tier's own ceiling on generation time passed (the caller's
    deadline is grpc's own business)."""

    status = "DEADLINE_EXCEEDED"
