"""Authentication: bearer tokens checked by a grpc.aio interceptor, and TLS
(mutual when a client CA is configured).

Tokens come from a file or an environment variable named in the config,
never from the config itself; __main__ reads them (`load_tokens`), with
the caller each names (server/callers/identity.py).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from collections.abc import Iterable, Sequence

import grpc

from ..callers.identity import bearer_of

HEALTH_SERVICE = "grpc.health.v1.Health"


def load_tokens(token_file: str | None, token_env: str | None, callers: Sequence[str] = ()) -> dict[str, str]:
    """Tokens from a file (one per line, # comments) and/or an environment
    variable (comma-separated), each to the caller it names: "name:token"
    names a caller of `callers` (server/callers/identity.py), a bare token
    none (""). Empty: authentication is off."""
    entries: list[tuple[str, str]] = []  # (where, entry)
    if token_file:
        for n, line in enumerate(Path(token_file).read_text().splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((f"security.token_file line {n}", line))
    if token_env:
        value = os.environ.get(token_env, "")
        if not value:
            raise ValueError(f"security.token_env names {token_env}, which is not set")
        entries += [(f"security.token_env ({token_env}) entry {i}", t.strip()) for i, t in enumerate(value.split(","), 1) if t.strip()]
    if (token_file or token_env) and not entries:
        raise ValueError("authentication is configured but no token was found")
    tokens: dict[str, str] = {}
    for where, entry in entries:
        name, _, token = entry.partition(":") if ":" in entry else ("", "", entry)
        name, token = name.strip(), token.strip()
        if name and name not in callers:
            raise ValueError(f"{where}: the token names caller {name!r}, which is not in callers "
                             f"({', '.join(callers) or 'none configured'})")
        if len(token) < 16:
            raise ValueError(f"{where}: a token shorter than 16 characters: use long random tokens")
        if tokens.get(token, name) != name:
            raise ValueError(f"{where}: the same token names two callers ({tokens[token] or 'none'!r} and {name!r})")
        tokens[token] = name
    return tokens


def matches(presented: bytes, tokens: tuple[bytes, ...]) -> bool:
    # compare_digest on every token, no early exit: the time taken does not
    # depend on which token (or how much of one) matched.
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(presented, token)
    return ok


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <token>` on every call, except the services in
    `open_services` (health checking, when configured open)."""

    def __init__(self, tokens: Iterable[str], open_services: tuple[str, ...] = ()):
        self._tokens = tuple(t.encode() for t in tokens)
        self._open = tuple(f"/{s}/" for s in open_services)

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            yield  # pragma: no cover (makes this an async generator)

        self._deny = {
            "unary": grpc.unary_unary_rpc_method_handler(deny_unary),
            "stream": grpc.unary_stream_rpc_method_handler(deny_stream),
        }

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(self._open):
            return await continuation(details)
        presented = bearer_of(details.invocation_metadata)
        if presented and matches(presented, self._tokens):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        return self._deny["stream" if handler.unary_stream or handler.stream_stream else "unary"]


def tls_credentials(security) -> grpc.ServerCredentials:
    """Server TLS; mutual TLS (client certificates required) with tls_client_ca."""
    key = Path(security.tls_key).read_bytes()
    cert = Path(security.tls_cert).read_bytes()
    client_ca = Path(security.tls_client_ca).read_bytes() if security.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)
