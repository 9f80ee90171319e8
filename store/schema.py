"""The store's tables, and the migrations that make them: the one owner of
the schema, for SQLite and PostgreSQL alike.

A migration is a number and its statements, applied once, in order, inside
one transaction with the version they bring; a store records its version in
`schema_version`. Several processes starting together against one
PostgreSQL serialise on an advisory lock (SQLite: BEGIN IMMEDIATE), so
each migration runs once. A store made before this module (a feedback
SQLite file of an earlier release) already has migration 1's table, as
`IF NOT EXISTS` expects, and is carried forward from there.

Times are unix seconds (DOUBLE PRECISION: PostgreSQL's REAL is 4 bytes).
"""

from __future__ import annotations

MIGRATION_LOCK = 0x7472_6961  # PostgreSQL advisory lock key while migrating ("tria")

# (version, statements); `{blob}` is the dialect's byte-string type.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, ("""CREATE TABLE IF NOT EXISTS feedback (
            request_id TEXT PRIMARY KEY,
            received_at DOUBLE PRECISION NOT NULL,  -- the outcome arrived
            answered_at DOUBLE PRECISION NOT NULL,  -- the answer was given
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            p_complex DOUBLE PRECISION,             -- NULL when the classifier had failed
            threshold DOUBLE PRECISION NOT NULL,    -- the cut the score was held to
            reason TEXT NOT NULL,                   -- the rule that decided: classifier, override, fallback, ...
            rating INTEGER,                         -- 1..5, or NULL
            correct INTEGER,                        -- 1 / 0, or NULL
            label TEXT NOT NULL DEFAULT '',
            question TEXT                           -- only with feedback.keep_text
        )""",)),
    (2, ("CREATE INDEX IF NOT EXISTS feedback_received_at ON feedback (received_at)",
         # The tier each conversation reached (server/routing/sessions.py), for every process.
         """CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            tier INTEGER NOT NULL,                  -- index of the most capable tier reached, cheapest = 0
            seen DOUBLE PRECISION NOT NULL          -- last answered
        )""",
         "CREATE INDEX sessions_seen ON sessions (seen)",
         # Recent answers, so Feedback is taken by any process, not only the one that answered.
         """CREATE TABLE answers (
            request_id TEXT PRIMARY KEY,
            answered_at DOUBLE PRECISION NOT NULL,
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            p_complex DOUBLE PRECISION,
            threshold DOUBLE PRECISION NOT NULL,
            reason TEXT NOT NULL,
            question TEXT
        )""",
         "CREATE INDEX answers_answered_at ON answers (answered_at)",
         # Adopted adapters (server/routing/adapting.py): each generation's
         # artifact folder as a gzip'd tar, and which one routes.
         """CREATE TABLE adapters (
            generation INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            adopted_at DOUBLE PRECISION NOT NULL,
            report TEXT NOT NULL,                   -- the fit's figures, JSON
            digest TEXT NOT NULL,                   -- sha256 of artifact: names its unpacked folder
            artifact {blob} NOT NULL
        )""",
         """CREATE TABLE adapter_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            current_generation INTEGER,             -- NULL: the prior alone routes
            previous_generation INTEGER,
            version INTEGER NOT NULL                -- +1 on every change: processes follow it
        )""",
         "INSERT INTO adapter_state VALUES (1, NULL, NULL, 0)",
         # Leases: one holder at a time (the adapter fit), until it ends or `until` passes.
         """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until DOUBLE PRECISION NOT NULL
        )""")),
    # Callers (server/callers/): whose answer an outcome is about, and the
    # fleet's per-caller counts, one row per caller, kind and window.
    (3, ("ALTER TABLE feedback ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
         "ALTER TABLE answers ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
         """CREATE TABLE caller_usage (
            caller TEXT NOT NULL,
            kind TEXT NOT NULL,                     -- requests, tokens (a minute's window) or cost (a UTC day's)
            window_start BIGINT NOT NULL,           -- unix seconds, a multiple of the window's span
            amount DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (caller, kind, window_start)
        )""")),
)
LATEST = MIGRATIONS[-1][0]
BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA"}


def migrate(store) -> int:
    """Bring the store to LATEST; returns the version it was at."""
    with store.transaction() as tx:
        if store.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = tx.query("SELECT version FROM schema_version")
        was = rows[0][0] if rows else 0
        if not rows:
            tx.execute("INSERT INTO schema_version VALUES (0)")
        if was > LATEST:
            raise RuntimeError(f"{store.name}: its schema is version {was}, newer than this release's {LATEST}: upgrade Triage")
        for version, statements in MIGRATIONS:
            if version > was:
                for sql in statements:
                    tx.execute(sql.format(blob=BLOB[store.dialect]))
        tx.execute("UPDATE schema_version SET version = ?", (LATEST,))
    return was
