"""The bundled server's session store: SQLite in WAL mode, safe for several server processes.

Standard library only, so `oneiric-session sessions` can read it without importing `mcp`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from oneiric_session.common.sqlite_files import directory_lock, read_only_connection
from oneiric_session.server.database_file import file_identity, make_private
from oneiric_session.server.listing import INDEXES, Page, SessionFilter, listed, select_page

# Long enough to sit out another server process's write burst, short enough that a wedged
# database turns into a `status: "error"` answer before the client's own call timeout (30 s).
BUSY_TIMEOUT_SECONDS = 10.0
# 2: the indexes of `who` / `last` (server/listing.py); a schema-1 database is migrated on open.
SCHEMA_VERSION = 2
# Base ids whose last free suffix is remembered (one per component and second: a small map).
_MAX_REMEMBERED_BASES = 4096

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id       TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    component_name   TEXT NOT NULL,
    shell_type       TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    pid              INTEGER NOT NULL,
    user             TEXT NOT NULL,
    environment      TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    ended_at         TEXT,
    status           TEXT NOT NULL DEFAULT 'open',
    exit_reason      TEXT,
    duration_seconds REAL,
    start_metadata   TEXT NOT NULL,
    end_metadata     TEXT,
    recorded_at      TEXT NOT NULL
);
"""

# What `sessions` lists, in this order.
LISTED_COLUMNS = (
    "session_id",
    "component_name",
    "shell_type",
    "started_at",
    "ended_at",
    "status",
    "exit_reason",
    "duration_seconds",
)

EndStatus = Literal["ended", "not_found"]


@dataclass(frozen=True)
class NewSession:
    """A validated start event, as the store keeps it."""

    event_id: str
    base_session_id: str
    component_name: str
    shell_type: str
    hostname: str
    pid: int
    user: dict[str, str]
    environment: dict[str, str]
    started_at: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SessionEnding:
    """A validated end event, as the store keeps it (`duration_seconds` None: from the timestamps)."""

    session_id: str
    ended_at: str
    exit_reason: str | None
    duration_seconds: float | None
    metadata: dict[str, Any]


def parse_timestamp(value: str) -> datetime | None:
    """An event timestamp as an aware datetime (naive means UTC), or None when it is not a real one."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json(value: Any) -> str:
    # default=str: metadata arrives as JSON, but never let an odd value lose the session.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class SessionStore:
    """Sessions recorded by the bundled server; every method is one short transaction."""

    def __init__(self, path: Path, *, reading: sqlite3.Connection | None = None) -> None:
        """`reading`: a read-only connection to `path` to list with (`existing`), the file left as it is."""
        self.path = path
        # The MCP server runs tools on worker threads; one connection behind a lock is plenty
        # (SQLite serializes writers anyway) and keeps a single WAL reader/writer per process.
        self._lock = threading.Lock()
        self._last_suffix: dict[str, int] = {}  # base session id -> the suffix last found free
        if reading is not None:
            self._db, self._identity = reading, file_identity(path)
            return
        make_private(path)
        self._connect()

    @classmethod
    def existing(cls, path: Path) -> SessionStore:
        """The store at `path` for the listing commands: another program's database (tables, none
        of them `sessions`) is refused (sqlite3.DatabaseError) and left as it is, not given our
        tables. One this user may only read (a backup, a read-only mount) is opened read-only."""
        reader = read_only_connection(path)
        try:
            # (none at all: a database the server is making, its schema not yet where we read)
            tables = {row[0] for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            reader.close()  # a check only: the store opens its own
        if tables and "sessions" not in tables:
            raise sqlite3.DatabaseError("it is not a session database (it has no sessions table)")
        try:
            return cls(path)
        except sqlite3.OperationalError:  # (it cannot be written here: read as it is)
            return cls(path, reading=read_only_connection(path))

    def _connect(self) -> None:
        """Open the database at `path`: made a WAL database if it is new, its schema made or migrated."""
        path = self.path
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            identity = file_identity(path)
            db.row_factory = sqlite3.Row
            # SQLite says whether it is in WAL mode yet: no descriptor of ours is opened on the file.
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                self._prepare(db)
            else:
                with directory_lock(path):  # a new file: made a WAL database by one process at a time
                    self._prepare(db)
        except BaseException:
            db.close()
            raise
        self._db, self._identity = db, identity

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged start or end must survive a power loss; the agent deletes its
        # spooled copy as soon as we answer.
        db.execute("PRAGMA synchronous=FULL")
        with _Transaction(db, self._lock):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                newer = f"schema {version} > {SCHEMA_VERSION}"
                raise sqlite3.DatabaseError(f"{self.path} was written by a newer oneiric-session ({newer})")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            _migrate(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def _same_file(self) -> None:
        """Before a write: if the database file was deleted or replaced under us, open the one there now.

        SQLite keeps writing into a deleted file's inode, so every session acknowledged after an
        `rm` would be lost; a write goes to the file at `path`, or fails (and the client keeps it).
        """
        current = file_identity(self.path)
        if current is not None and current == self._identity:
            return
        with self._lock:
            if file_identity(self.path) == self._identity is not None:
                return
            logger.warning("session database %s was deleted or replaced; opening it again", self.path)
            self._db.close()
        make_private(self.path)  # a new file 0600 too, beside none of the files the old one left
        self._connect()

    def record_start(self, session: NewSession, *, now: datetime | None = None) -> str:
        """Record a start and return its session id; a start already seen returns the id it got then."""
        return self._alone(self.start_work(session, now=now))

    def start_work(
        self, session: NewSession, *, now: datetime | None = None
    ) -> Callable[[sqlite3.Connection], str]:
        """`record_start` as a write for `commit` (several writes in one transaction)."""
        recorded_at = (now or datetime.now(UTC)).isoformat()
        return functools.partial(self._insert_start, session=session, recorded_at=recorded_at)

    def _insert_start(self, db: sqlite3.Connection, *, session: NewSession, recorded_at: str) -> str:
        row = db.execute("SELECT session_id FROM sessions WHERE event_id = ?", (session.event_id,)).fetchone()
        if row is not None:
            return str(row["session_id"])
        session_id = self._free_session_id(session.base_session_id)
        db.execute(
            "INSERT INTO sessions (session_id, event_id, component_name, shell_type, hostname, pid,"
            " user, environment, started_at, start_metadata, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                session.event_id,
                session.component_name,
                session.shell_type,
                session.hostname,
                session.pid,
                _json(session.user),
                _json(session.environment),
                session.started_at,
                _json(session.metadata),
                recorded_at,
            ),
        )
        return session_id

    def _free_session_id(self, base: str) -> str:
        """`base`, else `base-2`, `base-3`, ...: another event started in the same second.

        The search starts at the suffix this process last found free for `base` (ids are never
        removed, so every lower one is taken): a burst of starts in one second (a backlog, a
        fleet) costs a query or two each, not one per session already recorded in that second.
        Another server process on the same database only makes the search go further.
        """
        suffix = self._last_suffix.get(base, 1)
        candidate = base if suffix == 1 else f"{base}-{suffix}"
        while self._db.execute("SELECT 1 FROM sessions WHERE session_id = ?", (candidate,)).fetchone():
            suffix += 1
            candidate = f"{base}-{suffix}"
        if len(self._last_suffix) >= _MAX_REMEMBERED_BASES:
            self._last_suffix.clear()
        self._last_suffix[base] = suffix
        return candidate

    def record_end(self, ending: SessionEnding) -> EndStatus:
        """Close a session. An unknown id is `not_found`; a session already ended stays as it was."""
        return self._alone(self.end_work(ending))

    def end_work(self, ending: SessionEnding) -> Callable[[sqlite3.Connection], EndStatus]:
        """`record_end` as a write for `commit` (several writes in one transaction)."""
        session_id, ended_at = ending.session_id, ending.ended_at

        def end(db: sqlite3.Connection) -> EndStatus:
            row = db.execute(
                "SELECT status, started_at FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                return "not_found"
            if row["status"] == "ended":
                return "ended"
            duration = ending.duration_seconds
            if duration is None:
                duration = _elapsed_seconds(row["started_at"], ended_at)
            db.execute(
                "UPDATE sessions SET status = 'ended', ended_at = ?, exit_reason = ?,"
                " duration_seconds = ?, end_metadata = ? WHERE session_id = ?",
                (ended_at, ending.exit_reason, duration, _json(ending.metadata), session_id),
            )
            return "ended"

        return end

    def commit(self, works: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run `works` in one transaction, each in its own savepoint (one that raises is undone alone);
        per work, (True, its result) or (False, its exception). Raises only when the transaction or
        its commit fails, and then none of it holds (`server.group_commit` batches tool calls here)."""
        self._same_file()
        outcomes: list[tuple[bool, Any]] = []
        with self._transaction():
            for work in works:
                self._db.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, work(self._db)))
                except Exception as exc:
                    outcomes.append((False, exc))
                    self._db.execute("ROLLBACK TO write")
                self._db.execute("RELEASE write")
        return outcomes

    def _alone(self, work: Callable[[sqlite3.Connection], T]) -> T:
        ((ok, value),) = self.commit([work])
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every recorded session in the order they were recorded, with the listed columns."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(LISTED_COLUMNS)} FROM sessions ORDER BY rowid"
            ).fetchall()
        return [listed(row, LISTED_COLUMNS) for row in rows]

    def list_page(self, where: SessionFilter, *, limit: int | None = None, cursor: str | None = None) -> Page:
        """One page of sessions, newest start first (see `server.listing`); raises BadQuery on bad input."""
        with self._lock:
            return select_page(self._db, where, limit=limit, cursor=cursor)

    def count_sessions(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM sessions").fetchone()[0])

    def close(self, *, wait_seconds: float | None = None) -> None:
        """Close after any write in flight; with `wait_seconds`, give up waiting after that long."""
        if not self._lock.acquire(timeout=-1 if wait_seconds is None else wait_seconds):
            return  # leaving anyway: the unfinished transaction rolls back
        try:
            self._db.close()
        finally:
            self._lock.release()


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a schema-1 (or brand new) table to schema 2 (its indexes); idempotent, inside the opening
    transaction. On a large schema-1 database this builds the indexes once (seconds per 100,000)."""
    for statement in INDEXES:
        db.execute(statement)


def _elapsed_seconds(started_at: str, ended_at: str) -> float | None:
    start, end = parse_timestamp(started_at), parse_timestamp(ended_at)
    if start is None or end is None:
        return None
    elapsed = (end - start).total_seconds()
    return elapsed if elapsed >= 0 and math.isfinite(elapsed) else None


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` under the connection lock: the write lock is taken up front,
    so two server processes never both pick the same free session id."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
