"""Who is asking: a request's credential to a caller's name.

A caller is named by its bearer token (security.token_file / token_env,
where a line "name:token" maps the token to a configured caller; a bare
token authenticates without naming one) or, over mutual TLS, by its client
certificate's subject (`callers[].tls_subject`). Anything else is the one
caller OTHER_CALLER, so a metric label never takes a value from a request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from ..config import OTHER_CALLER, CallerConfig


def _digest(token: bytes) -> bytes:
    # Looked up by digest, not by the token: a dict lookup on the secret
    # itself would compare it byte by byte against a colliding key.
    return hashlib.sha256(token).digest()


class CallerBook:
    def __init__(self, named_tokens: Mapping[str, str], callers: Sequence[CallerConfig]):
        """`named_tokens`: token -> caller name ("" for a token that names none)."""
        self.names = tuple(c.name for c in callers)
        self._by_token = {_digest(t.encode()): name for t, name in named_tokens.items() if name}
        self._by_subject = {c.tls_subject: c.name for c in callers if c.tls_subject}

    def __bool__(self) -> bool:
        return bool(self.names)

    def of_token(self, token: bytes | str | None) -> str:
        if not token or not self._by_token:
            return OTHER_CALLER
        return self._by_token.get(_digest(token.encode() if isinstance(token, str) else token), OTHER_CALLER)

    def of_subject(self, subject: str | None, common_name: str | None = None) -> str | None:
        """A client certificate's caller, or None when it names none."""
        if subject and subject in self._by_subject:
            return self._by_subject[subject]
        if common_name:
            return self._by_subject.get(f"CN={common_name}")
        return None

    def of_grpc(self, context) -> str:
        """The caller of a gRPC call (its ServicerContext): its
        certificate's subject first (the transport proved it), else its
        bearer token."""
        if self._by_subject and (auth_context := context.auth_context()):
            first = lambda key: (auth_context.get(key) or [b""])[0].decode(errors="replace")  # noqa: E731
            named = self.of_subject(first("x509_subject"), first("x509_common_name"))
            if named is not None:
                return named
        return self.of_token(bearer_of(context.invocation_metadata()))

    def of_http(self, authorization: str, peercert) -> str:
        """The caller of an HTTP request: its client certificate's common
        name first (`peercert()`: the TLS peer's certificate, looked at only
        when some caller has a tls_subject), else its bearer token."""
        if self._by_subject and (cert := peercert()):
            common_name = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
            named = self.of_subject(None, common_name)
            if named is not None:
                return named
        return self.of_token(bearer_token(authorization))


def bearer_token(value: str | bytes) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value, if it is one."""
    value = value.encode() if isinstance(value, str) else value
    return value[7:].strip() if value[:7].lower() == b"bearer " else None


def bearer_of(metadata) -> bytes | None:
    """The token of gRPC metadata's `authorization` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            return bearer_token(value)
    return None
