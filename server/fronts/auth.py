"""Authentication: bearer tokens checked by a grpc.aio interceptor, and TLS
(mutual when a client CA is configured).

Tokens come from a file or an environment variable named in the config,
never from the config itself; __main__ reads them (`load_tokens`).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

HEALTH_SERVICE = "grpc.health.v1.Health"


def load_tokens(token_file: str | None, token_env: str | None) -> tuple[str, ...]:
    """Tokens from a file (one per line, # comments) and/or an environment
    variable (comma-separated). Empty: authentication is off."""
    tokens: list[str] = []
    if token_file:
        for line in Path(token_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    if token_env:
        value = os.environ.get(token_env, "")
        if not value:
            raise ValueError(f"security.token_env names {token_env}, which is not set")
        tokens += [t.strip() for t in value.split(",") if t.strip()]
    if (token_file or token_env) and not tokens:
        raise ValueError("authentication is configured but no token was found")
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise ValueError(f"{len(short)} token(s) shorter than 16 characters: use long random tokens")
    return tuple(tokens)


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

    def __init__(self, tokens: tuple[str, ...], open_services: tuple[str, ...] = ()):
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
        presented = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                value = value.encode() if isinstance(value, str) else value
                if value[:7].lower() == b"bearer ":
                    presented = value[7:].strip()
                break
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
