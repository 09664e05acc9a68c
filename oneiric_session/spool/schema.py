"""The spool's SQLite schema: created in a new file, checked in an existing one, grown in place.

Standard library only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from oneiric_session.spool.transaction import immediate

__all__ = ["SCHEMA_VERSION", "TABLES", "NeedsFreshSpool", "check_schema"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE destinations (
    key TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE sessions (
    handle TEXT PRIMARY KEY,
    destination_key TEXT NOT NULL,
    server_session_id TEXT,
    pid INTEGER,
    pid_start_time INTEGER,
    boot_id TEXT,
    started_at REAL NOT NULL,
    last_seen_alive REAL NOT NULL,
    end_spooled INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    pid_ns TEXT
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('start', 'end')),
    handle TEXT NOT NULL,
    destination_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    dead_category TEXT,
    dead_reason TEXT
);
CREATE INDEX events_by_state ON events (state, id);
CREATE INDEX events_by_handle ON events (handle, kind);
CREATE INDEX events_by_age ON events (created_at);
CREATE TABLE totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO totals VALUES (1, 0, 0);
-- Running totals keep the caps check O(1) on every append.
CREATE TRIGGER events_counted AFTER INSERT ON events BEGIN
    UPDATE totals SET rows = rows + 1, bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER events_uncounted AFTER DELETE ON events BEGIN
    UPDATE totals SET rows = rows - 1, bytes = bytes - OLD.size WHERE id = 1;
END;
CREATE TABLE drops (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The outbox records taken in whose files may still exist (spool/intake.py): never taken twice.
CREATE TABLE taken (
    name TEXT PRIMARY KEY
);
"""
TABLES = frozenset({"destinations", "sessions", "events", "totals", "drops", "meta"})


class NeedsFreshSpool(Exception):
    """The file is not a usable spool of this schema version."""


def check_schema(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file, add the columns an older spool lacks; NeedsFreshSpool if foreign."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
        if not tables.keys() >= TABLES:
            raise NeedsFreshSpool(f"schema version {version} without tables {sorted(TABLES - tables.keys())}")
        if "pid_ns" not in (tables["sessions"] or ""):
            _add_session_origin(conn)
        if "taken" not in tables:
            with immediate(conn):
                conn.execute("CREATE TABLE IF NOT EXISTS taken (name TEXT PRIMARY KEY)")
        return
    if version != 0:
        raise NeedsFreshSpool(f"schema version {version}, expected {SCHEMA_VERSION}")
    # Possibly new: create it under the write lock; another process may have just done so.
    with immediate(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise NeedsFreshSpool("a database that is not a spool")
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    if version not in (0, SCHEMA_VERSION):
        raise NeedsFreshSpool(f"schema version {version}, expected {SCHEMA_VERSION}")


def _add_session_origin(conn: sqlite3.Connection) -> None:
    """Spools made before sessions recorded their shell's host and PID namespace gain the columns.

    Added in place, without a version change: older code reads the table by column names.
    """
    with immediate(conn):
        columns = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
        for column in ("host", "pid_ns"):
            if column not in columns:
                conn.execute(f"ALTER TABLE sessions ADD COLUMN {column} TEXT")


def _statements(script: str) -> Iterator[str]:
    """The statements of `script`, to run inside our own transaction (executescript would commit)."""
    buf = ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
