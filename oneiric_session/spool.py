"""The durable outbox: every start and end is written here before the shell moves on.

One SQLite file in WAL mode, shared by every shell of the user (each in its own process)
and read by the one delivery agent. Writers take the lock with BEGIN IMMEDIATE and hold it
for one short transaction; each append is fsync'ed (synchronous=FULL) before it returns.
The agent's connection may commit with synchronous=NORMAL (`durable=False`): in WAL mode a
commit then survives the process's crash but not a power loss, and what such a loss undoes
is only the agent's bookkeeping (an acknowledgement, a failure count, a dead letter), so the
row is sent again and the server's idempotence on event_id absorbs it. A shell's later FULL
commit syncs the whole log, the agent's earlier commits included.

Rows are delivered oldest first. A start's acknowledgement deletes its row and records the
server's session id in the same transaction; an end is deliverable only once its session has
that id, and follows its start into dead letters when the start is refused. The spool is
bounded by rows, bytes and age: the oldest rows are dropped (a start together with its end)
and counted by reason. A corrupt or foreign file is moved aside and a fresh spool started
(never by a read-only Spool, `read_only=True`, as `status` and `spool list` use: it never
creates, converts or moves a file, and says what the file is instead). A spool that another
user could have written (its directory or files theirs, or writable by them) is refused:
its rows are launch lines the agent would execute (`privacy.foreign_reason`).
The token is never written: a "token" key anywhere in an event is removed.

Standard library only: this module is imported by every shell.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from oneiric_session.destination import Destination
from oneiric_session.errors import SpoolError, UnsafeSpoolError
from oneiric_session.privacy import foreign_reason

__all__ = [
    "DEAD_AUTH",
    "DEAD_REJECTED",
    "DEAD_START_REFUSED",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "DROP_MAX_AGE",
    "DROP_MAX_BYTES",
    "DROP_MAX_ROWS",
    "DROP_NO_START",
    "SCHEMA_VERSION",
    "OpenSession",
    "Spool",
    "SpoolStats",
    "SpooledEvent",
]

logger = logging.getLogger("oneiric_session.spool")

SCHEMA_VERSION = 1
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_SECONDS = 30 * 86400.0
# A writer waits this long for another process's transaction; every transaction is short.
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
# last_error and dead reasons are server messages: keep them readable, not unbounded.
_MAX_ERROR_CHARS = 2000

# Dead-letter categories (requeue_dead selects by category).
DEAD_REJECTED = "rejected"
DEAD_AUTH = "auth"
DEAD_START_REFUSED = "start refused"

# Drop reasons.
DROP_MAX_ROWS = "max_rows"
DROP_MAX_BYTES = "max_bytes"
DROP_MAX_AGE = "max_age"
DROP_NO_START = "no_start"
# The drops table also counts whole sessions per reason, under this prefix (SpoolStats.dropped_sessions).
SESSION_DROPS_PREFIX = "sessions:"

_SECRET_KEYS = frozenset({"token"})
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR_SHORT_READ = 522
# SQLite's default page size, and its default WAL auto-checkpoint (pages); the least we allow.
_PAGE_BYTES = 4096
_DEFAULT_WAL_PAGES = 1000
_MIN_WAL_PAGES = 4

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
"""
_TABLES = frozenset({"destinations", "sessions", "events", "totals", "drops", "meta"})

_EVENT_COLUMNS = (
    "e.id, e.event_id, e.kind, e.handle, e.destination_key, e.payload, e.attempts, e.last_error,"
    " e.created_at, e.next_attempt_at, e.state, e.dead_category, e.dead_reason, s.server_session_id"
)

_T = TypeVar("_T")
# The meta key of the deliverer's claim (its pid, start time, boot id): see claim_agent.
_META_OWNER = "agent.owner"


class _NeedsFreshSpool(Exception):
    """The file is not a usable spool of this schema version."""


# NamedTuples, not dataclasses: the shell imports this module, and they cost a tenth to define.
# A row is named by its id AND its event_id: after the file was moved aside and started afresh,
# ids begin again at 1, and an agent still holding an old row must not touch an unrelated one.
_DELETE_ROW = "DELETE FROM events WHERE id = ? AND event_id = ?"


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


def _strip_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _strip_secrets(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.lower() in _SECRET_KEYS)
        }
    if isinstance(value, list | tuple):
        return [_strip_secrets(v) for v in value]
    return value


def _encode(event: Mapping[str, Any]) -> str:
    try:
        return json.dumps(_strip_secrets(event), separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError) as exc:
        raise SpoolError(f"event cannot be spooled: {type(exc).__name__}") from None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _side_ids(path: Path) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(device, inode) of the spool's -wal and -shm files on disk now (None: absent)."""
    found: list[tuple[int, int] | None] = []
    for suffix in ("-wal", "-shm"):
        try:
            st = os.stat(f"{path}{suffix}")
        except OSError:
            found.append(None)
        else:
            found.append((st.st_dev, st.st_ino))
    return found[0], found[1]


def _is_lost_wal(exc: BaseException) -> bool:
    """SQLITE_IOERR_SHORT_READ: the WAL index names frames the WAL on disk does not have."""
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_IOERR_SHORT_READ


def _is_corruption(exc: BaseException) -> bool:
    """Not a database, or a damaged one: the only errors that justify starting afresh."""
    if isinstance(exc, _NeedsFreshSpool):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


class Spool:
    """The durable outbox at `path`. Thread-safe; one instance per process (it reopens after fork).

    Every public method raises only SpoolError (after recovery from corruption was tried).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
        checkpoint_on_close: bool = True,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        # True (`status`, `spool list`): never create, convert or move aside what is at `path`.
        self._read_only = read_only
        # False (the agent): commits skip the fsync (synchronous=NORMAL), see the module doc.
        self._synchronous = "FULL" if durable else "NORMAL"
        # False (a shell): closing never checkpoints the WAL, where SQLite can be told so (Python 3.12+).
        # Every append is already durable in the WAL; the agent's connection checkpoints it.
        self._checkpoint_on_close = checkpoint_on_close
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._busy_timeout_seconds = busy_timeout_seconds
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._file_id: tuple[int, int] | None = None
        # The -wal and -shm files this connection opened (see spool_rejoin): compared before each use.
        self._side_ids: tuple[tuple[int, int] | None, tuple[int, int] | None] | None = None
        self._failed_side_ids: tuple[tuple[int, int] | None, tuple[int, int] | None] | None = None
        # A connection inherited across fork is kept referenced, never used nor closed by the child.
        self._inherited: sqlite3.Connection | None = None

    # ----------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Open (creating or recovering) the spool now; raises SpoolError if it cannot be used."""
        self._read(lambda conn: None)

    def close(self) -> None:
        """Close the connection; idempotent. Any later call opens it again."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._conn_pid != os.getpid():
                self._inherited = conn
            elif conn is not None and self._side_ids is not None and _side_ids(self.path) != self._side_ids:
                from oneiric_session import spool_rejoin

                spool_rejoin.abandon(conn, self.path)  # a usual close would checkpoint deleted files
            elif conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- shell side

    def append_start(
        self,
        handle: str,
        destination: Destination,
        event: Mapping[str, Any],
        *,
        pid: int | None,
        pid_start_time: int | None,
        boot_id: str | None,
        host: str | None = None,
        pid_ns: str | None = None,
    ) -> bool:
        """Spool a session start durably. False if this event_id or handle was already spooled.

        `pid` is the shell's, on `host` in PID namespace `pid_ns` (procinfo.identify()).
        """
        payload = _encode(event)
        event_id = str(event.get("event_id") or f"start:{handle}")

        def write(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            self._save_destination(conn, destination)
            cur = conn.execute(
                "INSERT OR IGNORE INTO sessions (handle, destination_key, pid, pid_start_time, boot_id,"
                " started_at, last_seen_alive, host, pid_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (handle, destination.key, pid, pid_start_time, boot_id, now, now, host, pid_ns),
            )
            if cur.rowcount == 0:
                return False
            if not self._insert_event(conn, event_id, "start", handle, destination.key, payload, now):
                # This start is spooled already under another handle: no second session for it.
                conn.execute("DELETE FROM sessions WHERE handle = ?", (handle,))
                return False
            self._enforce(conn, now)
            return True

        return self._write(write)

    def append_end(self, handle: str, destination: Destination | None, event: Mapping[str, Any]) -> bool:
        """Spool a session end durably; it goes where its start went (`destination` is a fallback).

        False if the end was already spooled, or its start is unknown here (dropped, never
        spooled): that loss is counted as "no_start".
        """
        payload = _encode(event)
        # One end per session: a second end (the shell's and the agent's "abnormal") is ignored.
        event_id = f"end:{handle}"

        def write(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            row = conn.execute(
                "SELECT destination_key, end_spooled FROM sessions WHERE handle = ?", (handle,)
            ).fetchone()
            if row is None:
                self._count_drop(conn, DROP_NO_START, 1)
                return False
            key, end_spooled = row
            if end_spooled:
                return False
            if destination is not None and destination.key == key:
                self._save_destination(conn, destination)
            conn.execute("UPDATE sessions SET end_spooled = 1 WHERE handle = ?", (handle,))
            written = self._insert_event(conn, event_id, "end", handle, key, payload, now)
            refused = conn.execute(
                "SELECT dead_reason FROM events WHERE handle = ? AND kind = 'start' AND state = 'dead'",
                (handle,),
            ).fetchone()
            if refused is not None:
                self._bury(
                    conn,
                    "kind = 'end' AND handle = ?",
                    (handle,),
                    DEAD_START_REFUSED,
                    _clip(f"start refused: {refused[0]}"),
                )
            self._enforce(conn, now)
            return written

        return self._write(write)

    # ----------------------------------------------------------------- agent side

    def next_batch(
        self, *, destination_key: str | None = None, limit: int = 100, now: float | None = None
    ) -> list[SpooledEvent]:
        """Deliverable pending rows, oldest first: due now, and ends only once their start is acknowledged."""
        when = self._clock() if now is None else now
        where = (
            "e.state = 'pending' AND e.next_attempt_at <= ?"
            " AND (e.kind = 'start' OR s.server_session_id IS NOT NULL)"
        )
        params: list[Any] = [when]
        if destination_key is not None:
            where += " AND e.destination_key = ?"
            params.append(destination_key)
        return self._select_events(where, params, limit)

    def due_schedule(
        self, bound: Callable[[str], float] | None = None, *, now: float | None = None
    ) -> dict[str, float]:
        """Per destination with deliverable pending rows: when its earliest one is due (clock time).

        A deadline further than `bound(key)` seconds from now (written before the wall clock
        stepped back) is brought to now + bound(key), in the spool too: no back-off written by
        any agent outlasts the back-off cap, whatever the clock did since.
        """
        when = self._clock() if now is None else now

        def read(conn: sqlite3.Connection) -> dict[str, float]:
            rows = conn.execute(
                "SELECT e.destination_key, MIN(e.next_attempt_at) FROM events e"
                " LEFT JOIN sessions s ON s.handle = e.handle WHERE e.state = 'pending'"
                " AND (e.kind = 'start' OR s.server_session_id IS NOT NULL) GROUP BY e.destination_key"
            ).fetchall()
            return {key: at for key, at in rows}

        due = self._read(read)
        if bound is None:
            return due
        limits = {key: when + max(0.0, bound(key)) for key in due}
        late = {key: limit for key, limit in limits.items() if due[key] > limit}
        if late:

            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(
                    "UPDATE events SET next_attempt_at = ?"
                    " WHERE destination_key = ? AND state = 'pending' AND next_attempt_at > ?",
                    ((limit, key, limit) for key, limit in late.items()),
                )

            self._write(write)
            due.update(late)
        return due

    def make_due(self, rows: Iterable[tuple[int, str]], now: float | None = None) -> int:
        """These rows (row id, event id) are due at `now` at the latest: their back-off ended."""
        when = self._clock() if now is None else now
        keys = list(rows)
        if not keys:
            return 0
        return self._write(
            lambda conn: sum(
                conn.execute(
                    "UPDATE events SET next_attempt_at = MIN(next_attempt_at, ?)"
                    " WHERE id = ? AND event_id = ? AND state = 'pending'",
                    (when, row_id, event_id),
                ).rowcount
                for row_id, event_id in keys
            )
        )

    def pending_destinations(self) -> list[Destination]:
        """The destinations that have pending rows, in the order of their oldest row."""

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT destination_key FROM events WHERE state = 'pending'"
                " GROUP BY destination_key ORDER BY MIN(id)"
            ).fetchall()
            return [r[0] for r in rows]

        keys = self._read(read)
        found = (self.destination(k) for k in keys)
        return [d for d in found if d is not None]

    def destination(self, key: str) -> Destination | None:
        """The destination stored under `key` (None if unknown or unreadable)."""
        row = self._read(
            lambda conn: conn.execute("SELECT json FROM destinations WHERE key = ?", (key,)).fetchone()
        )
        dest = None
        if row is not None:
            try:
                dest = Destination.from_json(row[0])
            except (ValueError, TypeError, AttributeError):
                logger.warning("spool %s: destination %s cannot be read", self.path, key)
        return dest

    def ack_start(self, row: SpooledEvent, server_session_id: str) -> bool:
        """The server accepted the start: delete the row and map its handle, in one transaction."""

        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(_DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute(
                "UPDATE sessions SET server_session_id = ? WHERE handle = ?", (server_session_id, row.handle)
            )
            return deleted > 0

        return self._write(write)

    def ack_end(self, row: SpooledEvent) -> bool:
        """The server accepted the end: the row and its finished session are removed."""

        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(_DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute("DELETE FROM sessions WHERE handle = ?", (row.handle,))
            return deleted > 0

        return self._write(write)

    def ack_batch(self, starts: Iterable[tuple[SpooledEvent, str]], ends: Iterable[SpooledEvent]) -> int:
        """`ack_start` and `ack_end` for many answers in one transaction; returns the rows deleted."""
        started, ended = list(starts), list(ends)

        def write(conn: sqlite3.Connection) -> int:
            deleted = 0
            for row, server_session_id in started:
                deleted += conn.execute(_DELETE_ROW, (row.row_id, row.event_id)).rowcount
                conn.execute(
                    "UPDATE sessions SET server_session_id = ? WHERE handle = ?",
                    (server_session_id, row.handle),
                )
            for row in ended:
                deleted += conn.execute(_DELETE_ROW, (row.row_id, row.event_id)).rowcount
                conn.execute("DELETE FROM sessions WHERE handle = ?", (row.handle,))
            return deleted

        return self._write(write) if started or ended else 0

    def record_failure(self, row: SpooledEvent, error: str, next_attempt_at: float) -> bool:
        """A transient failure: count the attempt and wait until `next_attempt_at` (clock time)."""
        return self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE events SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                    " WHERE id = ? AND event_id = ? AND state = 'pending'",
                    (_clip(error), next_attempt_at, row.row_id, row.event_id),
                ).rowcount
                > 0
            )
        )

    def dead_letter(self, row: SpooledEvent, reason: str, *, category: str = DEAD_REJECTED) -> bool:
        """A permanent refusal: keep the row as a dead letter. A refused start takes its end along."""

        def write(conn: sqlite3.Connection) -> bool:
            this_row = (row.row_id, row.event_id)
            conn.execute("UPDATE events SET attempts = attempts + 1 WHERE id = ? AND event_id = ?", this_row)
            moved = self._bury(conn, "id = ? AND event_id = ?", this_row, category, _clip(reason))
            if moved and row.kind == "start":
                self._bury(
                    conn,
                    "kind = 'end' AND handle = ? AND state = 'pending'",
                    (row.handle,),
                    DEAD_START_REFUSED,
                    _clip(f"start refused: {reason}"),
                )
            return moved > 0

        return self._write(write)

    def requeue_dead(self, category: str | None = None) -> int:
        """Dead letters of `category` (all if None) become pending, due now; returns how many.

        Ends that followed a refused start come back with their start (never before it).
        """

        def write(conn: sqlite3.Connection) -> int:
            now = self._clock()
            revive = (
                "UPDATE events SET state = 'pending', dead_category = NULL, dead_reason = NULL,"
                " attempts = 0, next_attempt_at = ? WHERE state = 'dead' AND "
            )
            count = 0
            if category != DEAD_START_REFUSED:
                cond, params = "dead_category IS NOT ?", [DEAD_START_REFUSED]
                if category is not None:
                    cond, params = "dead_category = ?", [category]
                count += conn.execute(revive + cond, (now, *params)).rowcount
            count += conn.execute(
                revive + "dead_category = ? AND handle NOT IN"
                " (SELECT handle FROM events WHERE kind = 'start' AND state = 'dead')",
                (now, DEAD_START_REFUSED),
            ).rowcount
            return count

        return self._write(write)

    def retarget(self, old_key: str | None, destination: Destination) -> int:
        """Send rows spooled for `old_key` (any destination if None) to `destination`; returns how many.

        Moves starts, and ends whose start the old destination has not acknowledged (an
        acknowledged session can only be ended where it was started). Pending rows become due now.
        """

        def write(conn: sqlite3.Connection) -> int:
            now = self._clock()
            self._save_destination(conn, destination)
            cond, params = "destination_key != ?", [destination.key]
            if old_key is not None:
                cond, params = "destination_key = ? AND destination_key != ?", [old_key, destination.key]
            moved = conn.execute(
                "UPDATE events SET destination_key = ?,"
                " next_attempt_at = CASE WHEN state = 'pending' THEN ? ELSE next_attempt_at END"
                f" WHERE {cond} AND (kind = 'start' OR handle IN"
                " (SELECT handle FROM sessions WHERE server_session_id IS NULL))",
                (destination.key, now, *params),
            ).rowcount
            conn.execute(
                f"UPDATE sessions SET destination_key = ? WHERE {cond} AND server_session_id IS NULL",
                (destination.key, *params),
            )
            return moved

        return self._write(write)

    def open_sessions(self) -> list[OpenSession]:
        """Sessions whose end is not spooled yet (for watching their pids), oldest first."""
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT handle, destination_key, server_session_id, pid, pid_start_time, boot_id,"
                " started_at, last_seen_alive, host, pid_ns FROM sessions WHERE end_spooled = 0"
                " ORDER BY started_at"
            ).fetchall()
        )
        return [OpenSession(*r) for r in rows]

    def mark_alive(self, handles: str | Iterable[str], now: float | None = None) -> int:
        """Record that these sessions' processes were seen alive at `now` (clock time), in one
        transaction; returns how many sessions were found. Never moves a sighting backwards."""
        when = self._clock() if now is None else now
        names = [handles] if isinstance(handles, str) else list(handles)
        return self._write(
            lambda conn: sum(
                conn.execute(
                    "UPDATE sessions SET last_seen_alive = MAX(last_seen_alive, ?) WHERE handle = ?",
                    (when, handle),
                ).rowcount
                for handle in names
            )
        )

    def enforce_limits(self) -> dict[str, int]:
        """Apply the caps now (appends do it too); returns the rows dropped by reason."""
        return self._write(lambda conn: self._enforce(conn, self._clock()))

    # ----------------------------------------------------------------- reporting

    def stats(self) -> SpoolStats:
        def read(conn: sqlite3.Connection) -> SpoolStats:
            now = self._clock()
            depth, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM events WHERE state = 'pending'"
            ).fetchone()
            dead = conn.execute("SELECT COUNT(*) FROM events WHERE state = 'dead'").fetchone()[0]
            rows, size = conn.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
            opened = conn.execute("SELECT COUNT(*) FROM sessions WHERE end_spooled = 0").fetchone()[0]
            counted = dict(conn.execute("SELECT reason, count FROM drops ORDER BY reason").fetchall())
            drops = {k: v for k, v in counted.items() if not k.startswith(SESSION_DROPS_PREFIX)}
            whole = {
                k.removeprefix(SESSION_DROPS_PREFIX): v
                for k, v in counted.items()
                if k.startswith(SESSION_DROPS_PREFIX)
            }
            aside = conn.execute("SELECT value FROM meta WHERE key = 'moved_aside'").fetchone()
            return SpoolStats(
                depth=depth,
                oldest_pending_age_seconds=None if oldest is None else max(0.0, now - oldest),
                dead=dead,
                rows=rows,
                bytes=size,
                open_sessions=opened,
                drops=drops,
                moved_aside=None if aside is None else aside[0],
                dropped_sessions=whole,
            )

        return self._read(read)

    def list_pending(self, limit: int | None = None) -> list[SpooledEvent]:
        return self._select_events("e.state = 'pending'", [], limit)

    def list_dead(self, limit: int | None = None) -> list[SpooledEvent]:
        return self._select_events("e.state = 'dead'", [], limit)

    def meta_get(self, key: str) -> str | None:
        row = self._read(lambda conn: conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else row[0]

    def meta_set(self, key: str, value: str | None) -> None:
        """Store a small value (None deletes it), e.g. the agent's pid and breaker state."""

        def write(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        self._write(write)

    def claim_agent(self, owner: str, alive: Callable[[str], bool]) -> bool:
        """Record `owner` as this spool's one deliverer, unless a live one (`alive(its claim)`) is there.

        The claim lives in the spool itself, so it is found whatever name the spool is opened by and
        survives the lock file being deleted (see `wakeup.AgentLock`).
        """

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_OWNER,)).fetchone()
            if row is not None and row[0] != owner and alive(row[0]):
                return False
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_META_OWNER, owner),
            )
            return True

        return self._write(write)

    def release_agent(self, owner: str) -> None:
        """Drop `owner`'s claim (only its own)."""
        self._write(
            lambda conn: conn.execute("DELETE FROM meta WHERE key = ? AND value = ?", (_META_OWNER, owner))
        )

    # ----------------------------------------------------------------- internals: rows

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        event_id: str,
        kind: str,
        handle: str,
        key: str,
        payload: str,
        now: float,
    ) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (event_id, kind, handle, destination_key, payload, size,"
            " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, kind, handle, key, payload, len(payload.encode()), now, now),
        )
        return cur.rowcount > 0

    def _save_destination(self, conn: sqlite3.Connection, destination: Destination) -> None:
        text = destination.to_json()
        conn.execute(
            "INSERT INTO destinations (key, json) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET json = excluded.json WHERE json != excluded.json",
            (destination.key, text),
        )

    @staticmethod
    def _bury(
        conn: sqlite3.Connection, cond: str, params: tuple[Any, ...], category: str, reason: str
    ) -> int:
        return conn.execute(
            f"UPDATE events SET state = 'dead', dead_category = ?, dead_reason = ? WHERE {cond}",
            (category, reason, *params),
        ).rowcount

    @staticmethod
    def _count_drop(conn: sqlite3.Connection, reason: str, count: int) -> None:
        if count:
            conn.execute(
                "INSERT INTO drops (reason, count) VALUES (?, ?)"
                " ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                (reason, count),
            )

    def _enforce(self, conn: sqlite3.Connection, now: float) -> dict[str, int]:
        """Apply the caps, whole sessions at a time, oldest first (see `_droppable`)."""
        dropped: dict[str, int] = {}
        cutoff = now - self.max_age_seconds
        # Only a session whose every event is older than the cutoff ages out, and never one still
        # open: after the clock jumped forward, a live shell's start looks old but its end will come.
        aged = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT handle FROM events WHERE created_at < ? ORDER BY id", (cutoff,)
            ).fetchall()
        ]
        aged = [h for h in aged if self._droppable(conn, h, aged_before=cutoff)]
        dropped[DROP_MAX_AGE] = self._drop_sessions(conn, aged, DROP_MAX_AGE)
        rows, size = conn.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
        if rows > self.max_rows:
            victims = self._oldest_sessions(conn, need_rows=rows - self.max_rows, need_bytes=0)
            dropped[DROP_MAX_ROWS] = self._drop_sessions(conn, victims, DROP_MAX_ROWS)
            size = conn.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()[0]
        if size > self.max_bytes:
            victims = self._oldest_sessions(conn, need_rows=0, need_bytes=size - self.max_bytes)
            dropped[DROP_MAX_BYTES] = self._drop_sessions(conn, victims, DROP_MAX_BYTES)
        return {reason: n for reason, n in dropped.items() if n}

    @staticmethod
    def _droppable(conn: sqlite3.Connection, handle: str, *, aged_before: float | None = None) -> bool:
        """Whether a cap may drop this session whole.

        Never the end of a session the server already knows (dropping it would leave that session
        open at the server forever): such an end stays until delivered, counted in the caps. With
        `aged_before` (the age cap): never a session still open, nor one with an event after it.
        """
        row = conn.execute(
            "SELECT server_session_id, end_spooled FROM sessions WHERE handle = ?", (handle,)
        ).fetchone()
        if row is not None and row[0] is not None:
            return False
        if aged_before is None:
            return True
        if row is not None and not row[1]:
            return False
        newest = conn.execute("SELECT MAX(created_at) FROM events WHERE handle = ?", (handle,)).fetchone()[0]
        return newest is not None and newest < aged_before

    @staticmethod
    def _oldest_sessions(conn: sqlite3.Connection, *, need_rows: int, need_bytes: int) -> list[str]:
        """The oldest droppable sessions that together free at least this many rows and bytes."""
        handles: list[str] = []
        seen: set[str] = set()
        rows = size = 0
        cur = conn.execute(
            "SELECT e.handle, s.server_session_id FROM events e LEFT JOIN sessions s ON s.handle = e.handle"
            " ORDER BY e.id"
        )
        for handle, server_id in cur:
            if handle in seen or server_id is not None:
                continue
            seen.add(handle)
            count, total = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE handle = ?", (handle,)
            ).fetchone()
            handles.append(handle)
            rows += count
            size += total
            if rows >= need_rows and size >= need_bytes:
                break
        cur.close()
        return handles

    def _drop_sessions(self, conn: sqlite3.Connection, handles: list[str], reason: str) -> int:
        """Delete these sessions whole (every row); counted by rows and by sessions. Returns the rows."""
        count = 0
        for handle in handles:
            count += conn.execute("DELETE FROM events WHERE handle = ?", (handle,)).rowcount
            # Forgotten: a later end of it is counted as no_start, never sent without its start.
            conn.execute("DELETE FROM sessions WHERE handle = ? AND server_session_id IS NULL", (handle,))
        self._count_drop(conn, reason, count)
        self._count_drop(conn, SESSION_DROPS_PREFIX + reason, len(handles))
        return count

    def _select_events(self, where: str, params: list[Any], limit: int | None) -> list[SpooledEvent]:
        sql = (
            f"SELECT {_EVENT_COLUMNS} FROM events e LEFT JOIN sessions s ON s.handle = e.handle"
            f" WHERE {where} ORDER BY e.id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, limit]
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        found: dict[str, Destination | None] = {}
        for r in rows:
            if r[4] not in found:
                found[r[4]] = self.destination(r[4])
        return [self._event(r, found[r[4]]) for r in rows]

    @staticmethod
    def _event(r: tuple[Any, ...], destination: Destination | None) -> SpooledEvent:
        (
            row_id,
            event_id,
            kind,
            handle,
            key,
            payload,
            attempts,
            last_error,
            created,
            next_at,
            state,
            category,
            reason,
            server_id,
        ) = r
        return SpooledEvent(
            row_id=row_id,
            event_id=event_id,
            kind=kind,
            handle=handle,
            destination_key=key,
            destination=destination,
            payload=json.loads(payload),
            attempts=attempts,
            last_error=last_error,
            created_at=created,
            next_attempt_at=next_at,
            state=state,
            dead_category=category,
            dead_reason=reason,
            server_session_id=server_id,
        )

    # ----------------------------------------------------------------- internals: connection

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` in one BEGIN IMMEDIATE transaction, recovering once from a corrupt file."""

        def txn(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return self._read(txn)

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return fn(self._connection())
            except (sqlite3.Error, _NeedsFreshSpool) as exc:
                if _is_lost_wal(exc):
                    return self._retry_rejoined(fn, exc)
                if not _is_corruption(exc):
                    raise SpoolError(f"spool {self.path} cannot be used: {exc}") from exc
                if self._read_only:
                    raise SpoolError(
                        f"{self.path} is not a usable spool ({exc}); left untouched (only a shell "
                        "or the agent moves such a file aside)"
                    ) from exc
                failure: BaseException = exc
            except OSError as exc:
                raise SpoolError(f"spool {self.path} cannot be used: {exc.strerror or exc}") from exc
            try:
                self._recover(failure)
            except OSError as exc:
                raise SpoolError(f"spool {self.path} is unusable and cannot be replaced: {exc}") from exc
            try:
                return fn(self._connection())
            except (sqlite3.Error, _NeedsFreshSpool, OSError) as exc:
                raise SpoolError(f"spool {self.path} cannot be used even when started afresh: {exc}") from exc

    def _retry_rejoined(self, fn: Callable[[sqlite3.Connection], _T], exc: BaseException) -> _T:
        """A read past the end of the WAL: the WAL this index describes was deleted. Join, retry once."""
        try:
            return fn(self._rejoin())
        except (sqlite3.Error, _NeedsFreshSpool, OSError) as err:
            raise SpoolError(
                f"spool {self.path} cannot be used: {exc}; joining it again failed: {err}"
            ) from err

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid == os.getpid():
            if self._still_in_place():
                if self._side_ids is None or _side_ids(self.path) == self._side_ids:
                    return self._conn
                return self._rejoin()  # its WAL or WAL index was deleted: see spool_rejoin
            self.close()  # moved aside or deleted by another process: follow the path
        if self._conn is not None:
            self._inherited, self._conn = self._conn, None
        reason = foreign_reason(self.path)
        if reason is not None:
            raise UnsafeSpoolError(
                f"spool {self.path} refused: {reason}, so another user could have written it (its "
                "launch lines would run as you); set spool.path to a directory only you can write"
            )
        if self._read_only:
            return self._read_only_connection()
        self._make_parent()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_size == 0:
                os.fchmod(fd, 0o600)  # we may have created it: 0600 whatever the umask says
        finally:
            os.close(fd)
        # The file this connection is about: recovery moves it aside only if it is still in place.
        self._file_id = (st.st_dev, st.st_ino)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_seconds * 1000)}")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise SpoolError(f"spool {self.path}: WAL mode is not available here")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # The WAL is part of what the spool takes on disk: checkpoint it before it outgrows a
            # quarter of max_bytes, and truncate it back to that after (default cap: SQLite's defaults).
            wal_pages = self.wal_budget_pages()
            conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            conn.execute(f"PRAGMA journal_size_limit = {wal_pages * _PAGE_BYTES}")
            conn.execute("PRAGMA temp_store = MEMORY")  # drops use a small temp table
            if (
                sys.version_info >= (3, 12)  # Connection.setconfig
                and not self._checkpoint_on_close
                and hasattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE")
            ):
                # Closing the last connection would checkpoint the WAL (~10-30 ms of fsyncs).
                conn.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
            self._check_schema(conn)
        except BaseException:
            self._failed_side_ids = _side_ids(self.path)  # what a lost-WAL retry must leave
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        sides = _side_ids(self.path)  # opened by the schema check's reads
        self._side_ids = sides if None not in sides else None  # (none to compare: never a false alarm)
        return conn

    def wal_budget_pages(self) -> int:
        """Pages the WAL may hold before a checkpoint: a quarter of max_bytes, 4 to 1000 pages."""
        return max(_MIN_WAL_PAGES, min(_DEFAULT_WAL_PAGES, self.max_bytes // 4 // _PAGE_BYTES))

    def disk_bytes(self) -> int:
        """What the spool's files take on disk now: the database, its WAL and the WAL index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _rejoin(self) -> sqlite3.Connection:
        """Leave a connection whose WAL files are not the ones on disk; join the spool on disk again."""
        from oneiric_session import spool_rejoin

        old, held = self._conn, self._side_ids or self._failed_side_ids or (None, None)
        self._conn, self._side_ids, self._failed_side_ids = None, None, None
        snap = spool_rejoin.snapshot(old) if old is not None else None
        if old is not None:
            spool_rejoin.abandon(old, self.path)
        with _recovery_lock(self.path):
            spool_rejoin.drop_stale_index(self.path, held)
            conn = self._connection()
            message = (
                f"the spool's WAL files were deleted or replaced under process {os.getpid()};"
                " it joined the spool on disk again and merged what it still saw"
            )
            added = spool_rejoin.merge(conn, snap, held, self._clock(), message)
        logger.warning("spool %s: %s (%d row(s) restored)", self.path, message, added)
        return conn

    def _read_only_connection(self) -> sqlite3.Connection:
        """A connection that changes nothing: the file must already be a spool of this schema."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            header = os.read(fd, 100)
        finally:
            os.close(fd)
        if not header:
            raise _NeedsFreshSpool("an empty file (a spool being created?)")
        if not header.startswith(b"SQLite format 3\x00"):
            raise _NeedsFreshSpool("not an SQLite database")
        self._file_id = (st.st_dev, st.st_ino)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_seconds * 1000)}")
            conn.execute("PRAGMA query_only = 1")
            # Read through SQLite, not from the header: a fresh spool's schema may be in its WAL only.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise _NeedsFreshSpool(f"an SQLite database that is not a spool (user_version {version})")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables >= _TABLES:
                raise _NeedsFreshSpool(f"an SQLite database without the tables {sorted(_TABLES - tables)}")
        except BaseException:
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        return conn

    def _still_in_place(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._file_id

    @staticmethod
    def _check_schema(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            tables = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall())
            if not tables.keys() >= _TABLES:
                raise _NeedsFreshSpool(
                    f"schema version {version} without tables {sorted(_TABLES - tables.keys())}"
                )
            if "pid_ns" not in (tables["sessions"] or ""):
                _add_session_origin(conn)
            return
        if version != 0:
            raise _NeedsFreshSpool(f"schema version {version}, expected {SCHEMA_VERSION}")
        # Possibly new: create it under the write lock; another process may have just done so.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                    raise _NeedsFreshSpool("a database that is not a spool")
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if version not in (0, SCHEMA_VERSION):
            raise _NeedsFreshSpool(f"schema version {version}, expected {SCHEMA_VERSION}")

    def _make_parent(self) -> None:
        """Create the missing directories above the spool, each private to the user (0700)."""
        missing = []
        parent = self.path.parent
        while not parent.is_dir() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            for directory in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    directory.mkdir(mode=0o700)
                    directory.chmod(0o700)  # whatever the umask says
            if not self.path.parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file is in the way")
        except OSError as exc:
            raise SpoolError(
                f"spool directory {self.path.parent} cannot be created: {exc.strerror or exc}"
            ) from exc

    def _recover(self, exc: BaseException) -> None:
        """Move the corrupt file (and its WAL) aside, once, so the next connection starts fresh."""
        self.close()
        with _recovery_lock(self.path):
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return
            if self._file_id is not None and (st.st_dev, st.st_ino) != self._file_id:
                return  # another process already replaced it
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            n = 0
            while aside.exists():
                n += 1
                aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            try:
                os.replace(self.path, aside)
                wal = Path(f"{self.path}-wal")
                if wal.exists():
                    os.replace(wal, Path(f"{aside}-wal"))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}-shm")
            except OSError as err:
                raise SpoolError(f"spool {self.path} is unusable and cannot be moved aside: {err}") from err
        self._file_id = None
        logger.warning(
            "spool %s was unusable (%s); moved it aside to %s and started a fresh one",
            self.path,
            exc,
            aside.name,
        )
        # The fresh spool remembers it, so `status` can say where the old events are.
        try:
            conn = self._connection()
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('moved_aside', ?)", (str(aside),))
        except (sqlite3.Error, _NeedsFreshSpool, OSError) as err:
            raise SpoolError(f"spool {self.path} cannot be started afresh: {err}") from err


def _add_session_origin(conn: sqlite3.Connection) -> None:
    """Spools made before sessions recorded their shell's host and PID namespace gain the columns.

    Added in place, without a version change: older code reads the table by column names.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
        for column in ("host", "pid_ns"):
            if column not in columns:
                conn.execute(f"ALTER TABLE sessions ADD COLUMN {column} TEXT")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """The statements of `script`, to run inside our own transaction (executescript would commit)."""
    buf = ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""


@contextlib.contextmanager
def _recovery_lock(path: Path) -> Iterator[None]:
    """Serialize moving a corrupt spool aside between processes: a lock on its directory (POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: best effort
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
