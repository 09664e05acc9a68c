"""What the spool holds, as its readers see it: rows, open sessions, totals, and their names.

Standard library only.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final, Literal, NamedTuple

from oneiric_session.tracking.destination import Destination

__all__ = [
    "DAMAGED",
    "DEAD_AUTH",
    "DEAD_DAMAGED",
    "DEAD_REJECTED",
    "DEAD_START_REFUSED",
    "DELETE_ROW",
    "DROP_MAX_AGE",
    "DROP_MAX_BYTES",
    "DROP_MAX_ROWS",
    "DROP_NO_START",
    "EVENT_COLUMNS",
    "SESSION_DROPS_PREFIX",
    "STATE_DEAD",
    "STATE_PENDING",
    "OpenSession",
    "SpoolStats",
    "SpooledEvent",
    "Undecodable",
    "bury",
    "clip",
    "event_from_row",
    "save_destination",
]

# last_error and dead reasons are server messages: keep them readable, not unbounded.
_MAX_ERROR_CHARS = 2000

# Row states (the events table's CHECK in `schema`): waiting to be sent, or kept as a dead letter.
STATE_PENDING: Final = "pending"
STATE_DEAD: Final = "dead"

# Dead-letter categories (requeue_dead selects by category).
DEAD_REJECTED = "rejected"
DEAD_DAMAGED = "damaged"
DEAD_AUTH = "auth"
DEAD_START_REFUSED = "start refused"

# The last error of a row whose event cannot be read, and its reason as a dead letter.
DAMAGED = "its event cannot be read: the spool file was damaged where it is stored"

# Drop reasons.
DROP_MAX_ROWS = "max_rows"
DROP_MAX_BYTES = "max_bytes"
DROP_MAX_AGE = "max_age"
DROP_NO_START = "no_start"
# The drops table also counts whole sessions per reason, under this prefix (SpoolStats.dropped_sessions).
SESSION_DROPS_PREFIX = "sessions:"

EVENT_COLUMNS = (
    "e.id, e.event_id, e.kind, e.handle, e.destination_key, e.payload, e.attempts, e.last_error,"
    " e.created_at, e.next_attempt_at, e.state, e.dead_category, e.dead_reason, s.server_session_id"
)

# NamedTuples, not dataclasses: `status` imports this module, and they cost a tenth to define.
# A row is named by its id AND its event_id: after the file was moved aside and started afresh,
# ids begin again at 1, and an agent still holding an old row must not touch an unrelated one.
DELETE_ROW = "DELETE FROM events WHERE id = ? AND event_id = ?"


class SpooledEvent(NamedTuple):
    """One spooled row. `payload` is the sanitized wire arguments as appended."""

    row_id: int
    event_id: str
    kind: Literal["start", "end"]
    handle: str
    destination_key: str
    destination: Destination | None
    payload: dict[str, Any]
    attempts: int
    last_error: str | None
    created_at: float
    next_attempt_at: float
    state: Literal["pending", "dead"]
    dead_category: str | None
    dead_reason: str | None
    server_session_id: str | None

    @property
    def damaged(self) -> bool:
        """Whether its event could not be read from the spool (`event_from_row`): never sent."""
        return not self.payload

    def arguments(self) -> dict[str, Any]:
        """The tool arguments to send (without token): an end carries the server's session id."""
        args = dict(self.payload)
        if self.kind == "end" and self.server_session_id is not None:
            args["session_id"] = self.server_session_id
        return args


class OpenSession(NamedTuple):
    """A session whose start is spooled or delivered and whose end is not spooled yet."""

    handle: str
    destination_key: str
    server_session_id: str | None
    pid: int | None
    pid_start_time: int | None
    boot_id: str | None
    started_at: float
    last_seen_alive: float
    host: str | None = None  # where `pid` means something: the shell's host name ...
    pid_ns: str | None = None  # ... and PID namespace (None: not recorded)


class SpoolStats(NamedTuple):
    """What `status` and `spool list` report."""

    depth: int  # pending rows
    oldest_pending_age_seconds: float | None
    dead: int
    rows: int  # pending + dead
    bytes: int  # payload bytes, what max_bytes bounds
    open_sessions: int
    drops: dict[str, int]
    moved_aside: str | None  # the last corrupt file moved aside, if any
    dropped_sessions: dict[str, int]  # whole sessions dropped, by reason (rows are in drops)
    outbox: int = 0  # records the shells wrote that the agent has not taken in yet (counted in depth)


def clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


class Undecodable(str):
    """A text the spool stored that is no UTF-8 (damaged on disk), as read: its bytes replaced."""

    __slots__ = ()


def event_from_row(r: tuple[Any, ...], destination: Destination | None) -> SpooledEvent:
    """A row of EVENT_COLUMNS as a SpooledEvent: the columns in its fields' order, with the
    destination after the key and the payload parsed. A payload that does not parse (the spool
    file damaged on disk: SQLite keeps no checksum of a value) reads as `{}`, with DAMAGED as
    its last error: `damaged`, shown as such, and made a dead letter by the agent."""
    try:
        payload = None if isinstance(r[5], Undecodable) else json.loads(r[5])
    except (ValueError, TypeError, RecursionError):
        payload = None
    if isinstance(payload, dict) and payload:
        return SpooledEvent._make((*r[:5], destination, payload, *r[6:]))
    return SpooledEvent._make((*r[:5], destination, {}, *r[6:]))._replace(last_error=DAMAGED)


def save_destination(conn: sqlite3.Connection, destination: Destination) -> None:
    """Store (or update) a destination's launch line or URL and tuning, inside a write."""
    conn.execute(
        "INSERT INTO destinations (key, json) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET json = excluded.json WHERE json != excluded.json",
        (destination.key, destination.to_json()),
    )


def bury(conn: sqlite3.Connection, cond: str, params: tuple[Any, ...], category: str, reason: str) -> int:
    """Make the rows matching `cond` dead letters of `category`, inside a write; how many."""
    return conn.execute(
        f"UPDATE events SET state = '{STATE_DEAD}', dead_category = ?, dead_reason = ? WHERE {cond}",
        (category, reason, *params),
    ).rowcount
