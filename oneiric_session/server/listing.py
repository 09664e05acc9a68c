"""Reading sessions back, a page at a time: the query behind `who`, `last` and the `list_sessions` tool.

Standard library only (the CLI reads a local database without `mcp`). Pages are keyset-paged on
(start time, rowid), newest first, so page N costs what page 1 costs whatever the table's size;
the cursor is opaque to callers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# A page holds at most this many sessions: a million-row table still answers in bounded memory.
MAX_PAGE_SIZE = 500
# The sessions of one page, as JSON, at most (a client takes answers of 4 MiB, and an answer carries
# the page twice: structured and as text, escaped once more).
MAX_PAGE_JSON_BYTES = 1024 * 1024
DEFAULT_PAGE_SIZE = 100

# The fields of one listed session, in this order (documented in docs/operations.md).
LISTED_FIELDS = (
    "session_id",
    "component_name",
    "shell_type",
    "user",
    "hostname",
    "pid",
    "started_at",
    "ended_at",
    "status",
    "exit_reason",
    "duration_seconds",
)

# Schema 2: indexes on expressions over what schema 1 already stores (no new column, so nothing to
# rewrite, and any SQLite since 3.9), that keep `who` (open sessions) and `last` (newest first,
# optionally by component, user or host) fast. Queries repeat these expressions verbatim: that is
# how SQLite matches them to the indexes. `julianday` understands the event's `Z` / `+HH:MM`
# suffixes, so every start sorts in UTC; SQLite keeps date-times to the millisecond, so rounding
# to 3 places gives the exact epoch seconds back.
STARTED_EPOCH = "round((julianday(started_at) - 2440587.5) * 86400.0, 3)"
USERNAME = "json_extract(user, '$.username')"
INDEXES = (
    f"CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions ({STARTED_EPOCH})",
    f"CREATE INDEX IF NOT EXISTS sessions_open ON sessions ({STARTED_EPOCH}) WHERE status = 'open'",
    f"CREATE INDEX IF NOT EXISTS sessions_by_component ON sessions (component_name, {STARTED_EPOCH})",
    f"CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions ({USERNAME}, {STARTED_EPOCH})",
    f"CREATE INDEX IF NOT EXISTS sessions_by_host ON sessions (hostname, {STARTED_EPOCH})",
)

_SELECT = (
    f"SELECT rowid, session_id, component_name, shell_type, {USERNAME} AS user, hostname, pid,"
    f" started_at, ended_at, status, exit_reason, duration_seconds, {STARTED_EPOCH} AS started_epoch"
    " FROM sessions"
)
_ORDER = f" ORDER BY {STARTED_EPOCH} DESC, rowid DESC"


class BadQuery(ValueError):
    """A filter or cursor that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions: all, or only open ones; equal component, user, host; started in [since, until)."""

    open_only: bool = False
    component: str | None = None
    user: str | None = None
    host: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Page:
    sessions: list[dict[str, Any]]
    next_cursor: str | None


def parse_instant(value: str, name: str) -> datetime:
    """An ISO 8601 date or date-time as an aware datetime (naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise BadQuery(f"{name}: {value!r} is not an ISO 8601 date-time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def encode_cursor(epoch: float, rowid: int) -> str:
    raw = json.dumps([epoch, rowid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        epoch, rowid = json.loads(raw)
        if isinstance(epoch, bool) or not isinstance(epoch, int | float) or type(rowid) is not int:
            raise ValueError
        return float(epoch), rowid
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise BadQuery("cursor: not a cursor this server handed out") from exc


def page_size(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE_SIZE
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadQuery(f"limit: expected a whole number from 1 to {MAX_PAGE_SIZE}")
    return min(limit, MAX_PAGE_SIZE)


def page_query(where: SessionFilter, cursor: str | None, size: int) -> tuple[str, list[Any]]:
    """The SQL of one page (one row more than `size`, which tells whether a next page exists)."""
    clauses: list[str] = []
    params: list[Any] = []
    if where.open_only:
        clauses.append("status = 'open'")
    equal = (("component_name", where.component), (USERNAME, where.user), ("hostname", where.host))
    for column, value in equal:
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.since is not None:
        clauses.append(f"{STARTED_EPOCH} >= ?")
        params.append(_epoch(where.since))
    if where.until is not None:
        clauses.append(f"{STARTED_EPOCH} < ?")
        params.append(_epoch(where.until))
    if cursor:
        epoch, rowid = decode_cursor(cursor)
        # The first term bounds the index range (a seek, not a scan from the top); the second
        # breaks ties between starts in the same millisecond.
        clauses.append(f"{STARTED_EPOCH} <= ? AND ({STARTED_EPOCH} < ? OR rowid < ?)")
        params.extend((epoch, epoch, rowid))
    sql = _SELECT
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    return sql + _ORDER + " LIMIT ?", [*params, size + 1]


def listed(row: sqlite3.Row, names: Iterable[str]) -> dict[str, Any]:
    """A session row as it is listed: a number that is not finite (a database written by hand or
    by another program) as None, which JSON has (`Infinity` is no JSON)."""
    return {
        name: None if isinstance(value, float) and not math.isfinite(value) else value
        for name, value in ((name, row[name]) for name in names)
    }


def select_page(
    db: sqlite3.Connection, where: SessionFilter, *, limit: int | None = None, cursor: str | None = None
) -> Page:
    """One page, newest start first, and the cursor of the next page (None on the last one)."""
    size = page_size(limit)
    rows = db.execute(*page_query(where, cursor, size)).fetchall()
    more = len(rows) > size
    rows = rows[:size]
    sessions: list[dict[str, Any]] = []
    budget = MAX_PAGE_JSON_BYTES
    for row in rows:
        session = listed(row, LISTED_FIELDS)
        budget -= len(json.dumps(session))  # ASCII escapes: at least its UTF-8 size
        if sessions and budget < 0:  # the rest on the next page (one session always fits)
            more = True
            break
        sessions.append(session)
    last = rows[len(sessions) - 1] if sessions else None
    next_cursor = encode_cursor(last["started_epoch"], last["rowid"]) if more and last is not None else None
    return Page(sessions, next_cursor)
