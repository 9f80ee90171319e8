"""Fixtures every test folder shares: a real PostgreSQL server (Debian's,
installed by `make test-deps`), one per test session, and a fresh database
in it per test."""

from __future__ import annotations

import itertools
import socket

import pytest

from tools.local_postgres import LocalPostgres

_databases = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    """The server; tests that kill and restart it use `postgres_alone`."""
    server = LocalPostgres(_free_port()).init().start()
    yield server
    server.remove()


def new_database(server: LocalPostgres) -> str:
    """A new, empty database on `server`; its URL."""
    import psycopg

    name = f"t{next(_databases)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def pg_url(postgres) -> str:
    return new_database(postgres)


@pytest.fixture
def postgres_alone():
    """A server of the test's own, to kill and restart."""
    server = LocalPostgres(_free_port()).init().start()
    yield server
    server.remove()
