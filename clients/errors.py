"""Typed exceptions for gRPC status codes, so callers catch what they mean."""

from __future__ import annotations

import grpc


class TriageError(Exception):
    """A call to the router failed; `code` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, retry_after_ms: int | None = None):
        super().__init__(message)
        self.message = message
        # From the server's grpc-retry-pushback-ms trailer (RESOURCE_EXHAUSTED): when to try again.
        self.retry_after_ms = retry_after_ms
        if code is not None:
            self.code = code


class InvalidArgumentError(TriageError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TriageError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(TriageError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(TriageError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(TriageError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(TriageError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(TriageError):
    code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(TriageError):
    code = grpc.StatusCode.UNAUTHENTICATED


class InternalError(TriageError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in TriageError.__subclasses__()}


def from_rpc_error(err: grpc.RpcError) -> TriageError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, TriageError)
    retry_after_ms = None
    try:
        trailers = dict(err.trailing_metadata() or ())
        if "grpc-retry-pushback-ms" in trailers:
            retry_after_ms = int(trailers["grpc-retry-pushback-ms"])
    except (AttributeError, TypeError, ValueError):
        pass
    # Some statuses come without details (a health check of an unknown
    # service): say at least what the code means rather than nothing.
    return cls(f"{code.name}: {details or code.value[1]}", code, retry_after_ms)
