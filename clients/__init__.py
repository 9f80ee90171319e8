"""Clients for the Triage router: sync and asyncio libraries, and the CLI."""

from .client import AsyncTriageClient, TriageClient, build_request
from .errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TriageError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "AsyncTriageClient", "TriageClient", "build_request", "TriageError", "InvalidArgumentError", "NotFoundError",
    "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError", "FailedPreconditionError", "CancelledError", "UnauthenticatedError", "InternalError",
]
