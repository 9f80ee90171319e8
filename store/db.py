"""One database behind a URL: `sqlite:///path` (a file, the embedded
default: nothing to install) or `postgresql://user@host/db` (shared by
every worker and replica). The same SQL runs on both: statements use `?`
placeholders (turned into psycopg's `%s`) and only what the two dialects
share (ON CONFLICT upserts, CASE instead of MAX/GREATEST).

Calls block: the router runs them in worker threads, the classifier's CLI
directly. Any failure to reach the database, or a write it refused for
that reason, is `StoreUnavailable` with a message that names the store
(its password left out); the caller decides whether that refuses a
request (Feedback) or buffers a write (writer.py).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from pathlib import Path

from . import schema

SCHEMES = ("sqlite", "postgresql")


class StoreUnavailable(Exception):
    """The database could not be reached, or failed the statement for that reason."""


class NotAStore(ValueError):
    """The URL names no store, or a database without Triage's tables."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def dialect_of(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in SCHEMES or "://" not in url:
        raise NotAStore(f"{redact(url)}: a store URL is sqlite:///path or postgresql://user@host/db")
    return scheme


def as_url(url_or_path) -> str:
    """A store URL as given, or a bare path as its SQLite file's URL (tools, tests)."""
    url = str(url_or_path)
    return url if "://" in url else f"sqlite:///{Path(url).resolve()}"


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel/path` and `sqlite:////abs/path`, as SQLAlchemy reads them."""
    return Path(url.split("://", 1)[1][1:] if url.startswith("sqlite:///") else url.split("://", 1)[1])


class Store:
    """A connection (SQLite, behind a lock) or a small pool (PostgreSQL).
    `readonly`: no migration, no writes (a reader beside a running router)."""

    def __init__(self, url: str, *, readonly: bool = False, timeout_s: float = 5.0, pool_size: int = 4):
        self.url, self.dialect, self.readonly, self.timeout_s = url, dialect_of(url), readonly, timeout_s
        self.shared = self.dialect == "postgresql"  # several processes and hosts see one memory
        self.name = redact(url)
        if self.shared:
            self._pool = _pg_pool(url, timeout_s, pool_size)
        else:
            self._lock = threading.Lock()
            self._db = _sqlite_connect(sqlite_path(url), readonly)
        if not readonly:
            schema.migrate(self)

    # -- statements -------------------------------------------------------------

    def execute(self, sql: str, params: tuple = ()) -> int:
        """One statement, committed when it returns (durable: SQLite's
        synchronous=FULL, PostgreSQL's default commit). Returns the rows it touched."""
        return self._one(sql, params, lambda result: result.rowcount)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._one(sql, params, lambda result: result.fetchall())

    def _one(self, sql: str, params: tuple, read):
        """A statement on its own: SQLite's in a transaction; PostgreSQL's in
        autocommit, one round trip, tried once more on a new connection when
        a pooled one died with a restarted server (every statement the
        store runs alone is a read or an idempotent upsert)."""
        if not self.shared:
            with self.transaction() as tx:
                return read(tx.run(sql, params))
        import psycopg

        for attempt in (0, 1):
            try:
                return self._pg(lambda conn: read(conn.execute(_pg_sql(sql), params)))
            except StoreUnavailable as exc:
                if attempt or not isinstance(exc.__cause__, (psycopg.OperationalError, psycopg.InterfaceError)):
                    raise

    @contextlib.contextmanager
    def transaction(self):
        """A `Transaction`: its statements commit together when the block ends, or none do."""
        if self.shared:
            yield from self._pg_transaction()
        else:
            yield from self._sqlite_transaction()

    def _sqlite_transaction(self):
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if not self.readonly else "BEGIN")
                yield Transaction(self._db.execute)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise StoreUnavailable(f"{self.name}: {exc}") from exc
                if isinstance(exc, sqlite3.DatabaseError) and ("no such table" in str(exc) or "not a database" in str(exc)):
                    raise NotAStore(f"{self.name}: not a Triage store ({exc})") from exc
                raise

    def _pg_transaction(self):
        with self._pg_errors():
            with self._pool.connection(timeout=self.timeout_s) as conn:
                with conn.transaction():
                    with conn.cursor() as cur:
                        yield Transaction(lambda sql, params=(): cur.execute(_pg_sql(sql), params))

    def _pg(self, work):
        with self._pg_errors():
            with self._pool.connection(timeout=self.timeout_s) as conn:
                return work(conn)

    @contextlib.contextmanager
    def _pg_errors(self):
        """psycopg's failures as the store's: unreachable, or not a store."""
        import psycopg
        import psycopg_pool

        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable(f"{self.name}: no connection within {self.timeout_s:g} s (is the database up?)") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise NotAStore(f"{self.name}: not a Triage store ({exc})") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"{self.name}: {str(exc).strip().splitlines()[0]}") from exc

    def close(self) -> None:
        if self.shared:
            self._pool.close()
        else:
            with self._lock:
                self._db.close()


class Transaction:
    """Statements inside one transaction, written with `?` placeholders."""

    def __init__(self, run):
        self.run = run  # (sql, params) -> a cursor

    def execute(self, sql: str, params: tuple = ()) -> int:
        return self.run(sql, params).rowcount

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.run(sql, params).fetchall()


def _pg_sql(sql: str) -> str:
    """psycopg's placeholders are %s (and a literal % is %%)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _sqlite_connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.is_file():
            raise NotAStore(f"{path}: no such store")
        return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    if not path.parent.is_dir():
        raise NotAStore(f"{path}: its folder does not exist")
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise NotAStore(f"{path}: not a Triage store ({exc})") from None
    db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
    return db


def _pg_pool(url: str, timeout_s: float, size: int):
    """psycopg_pool's pool: it opens connections in the background and
    replaces broken ones (after a restart of the database)."""
    import psycopg_pool

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg_pool.ConnectionPool(conninfo, min_size=1, max_size=size, timeout=timeout_s, open=True,
                                       kwargs={"autocommit": True, "connect_timeout": max(2, int(timeout_s))}, name="triage-store")
