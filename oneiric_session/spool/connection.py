"""The spool's connection, one per process: reads and writes that recover, and the meta table.

Used by the agent (which takes the shells' outbox in and delivers), by the command line (read-only
for `status` and `spool list`), and by tests; a shell never opens the database (spool/outbox.py).
SpoolConnection knows nothing of rows: `Intake` (spool/intake.py) builds the appends and
the agent's queue on `_write` (one BEGIN IMMEDIATE transaction) and `_read`. Both take a
callback, not a `with` block, because after a corrupt file was moved aside the same work runs
once more on the fresh spool. It opens the file through spool/opening.py, follows a file moved
or replaced and moves a corrupt one aside through spool/recovery.py, and joins again after its
WAL files were deleted through spool/rejoin.py. A small key-value table (meta) lives here too:
recovery records in it where the corrupt file went, and the agent publishes its status through it.

Standard library only (`status` reads it without importing mcp or pydantic).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

from oneiric_session.common.privacy import foreign_reason
from oneiric_session.common.sqlite_files import directory_lock, is_wal_database
from oneiric_session.errors import SpoolError, UnsafeSpoolError
from oneiric_session.spool.opening import (
    connect,
    create_file,
    make_parent,
    open_read_only,
    prepare_writable,
    read_header,
    wal_pages_for,
)
from oneiric_session.spool.recovery import (
    FileId,
    SideIds,
    is_corruption,
    is_lost_wal,
    move_aside,
    side_ids,
    still_in_place,
)
from oneiric_session.spool.schema import NeedsFreshSpool
from oneiric_session.spool.transaction import immediate

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_SECONDS",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "SpoolConnection",
]

logger = logging.getLogger("oneiric_session.spool")

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_SECONDS = 30 * 86400.0
# A writer waits this long for another process's transaction; every transaction is short.
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0

_T = TypeVar("_T")


class SpoolConnection:
    """One connection to the spool at `path`, for one process (it reopens after fork). Thread-safe.

    `_read` and `_write` raise only SpoolError (after recovery from corruption was tried).
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
        # False: closing never checkpoints the WAL, where SQLite can be told so (Python 3.12+).
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
        self._file_id: FileId | None = None
        # The -wal and -shm files this connection opened (see spool/rejoin.py): compared before each use.
        self._side_ids: SideIds | None = None
        self._failed_side_ids: SideIds | None = None
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
            elif conn is not None and self._side_ids is not None and side_ids(self.path) != self._side_ids:
                import oneiric_session.spool.rejoin as spool_rejoin

                spool_rejoin.abandon(conn, self.path)  # a usual close would checkpoint deleted files
            elif conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta_get(self, key: str) -> str | None:
        row = self._read(lambda conn: conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else row[0]

    def meta_set(self, key: str, value: str | None) -> None:
        """Store a small value (None deletes it), e.g. the agent's pid."""

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

    # ----------------------------------------------------------------- internals: connection

    def _write(self, fn: Callable[[sqlite3.Connection], _T], *, sync: bool = False) -> _T:
        """Run `fn` in one BEGIN IMMEDIATE transaction, recovering once from a corrupt file.

        `sync`: the commit is flushed to disk even on a connection that does not flush its own
        (`durable=False`): what it writes has no other copy once it returns.
        """

        def txn(conn: sqlite3.Connection) -> _T:
            with immediate(conn):
                return fn(conn)

        def synced(conn: sqlite3.Connection) -> _T:
            conn.execute("PRAGMA synchronous = FULL")
            try:
                return txn(conn)
            finally:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")

        return self._read(synced if sync and self._synchronous != "FULL" else txn)

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return fn(self._connection())
            except (sqlite3.Error, NeedsFreshSpool) as exc:
                if is_lost_wal(exc):
                    return self._retry_rejoined(fn, exc)
                if not is_corruption(exc):
                    raise SpoolError(f"spool {self.path} cannot be used: {exc}") from exc
                if self._read_only:
                    raise SpoolError(
                        f"{self.path} is not a usable spool ({exc}); left untouched (only the agent "
                        "or `spool replay` moves such a file aside)"
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
            except (sqlite3.Error, NeedsFreshSpool, OSError) as exc:
                raise SpoolError(f"spool {self.path} cannot be used even when started afresh: {exc}") from exc

    def _retry_rejoined(self, fn: Callable[[sqlite3.Connection], _T], exc: BaseException) -> _T:
        """A read past the end of the WAL: the WAL this index describes was deleted. Join, retry once."""
        try:
            return fn(self._rejoin())
        except (sqlite3.Error, NeedsFreshSpool, OSError) as err:
            raise SpoolError(
                f"spool {self.path} cannot be used: {exc}; joining it again failed: {err}"
            ) from err

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid == os.getpid():
            if still_in_place(self.path, self._file_id):
                if self._side_ids is None or side_ids(self.path) == self._side_ids:
                    return self._conn
                return self._rejoin()  # its WAL or WAL index was deleted: see spool/rejoin.py
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
            conn, self._file_id = open_read_only(self.path, self._busy_timeout_seconds)
            self._conn, self._conn_pid = conn, os.getpid()
            return conn
        try:
            file_id, header = read_header(self.path)
        except OSError:  # none yet (or none can be: making it says why)
            file_id, header = None, b""
        if is_wal_database(header):
            try:
                return self._writable_connection(file_id)
            except sqlite3.Error:
                if still_in_place(self.path, file_id):
                    raise
                # Replaced between our look and our open (moved aside, made anew): a new file.
        # A new file becomes a WAL spool in one process at a time; the others wait for it.
        make_parent(self.path)
        with directory_lock(self.path):
            return self._writable_connection(create_file(self.path))

    def _writable_connection(self, file_id: FileId | None) -> sqlite3.Connection:
        # The file this connection is about: recovery moves it aside only if it is still in place.
        self._file_id = file_id
        conn = connect(self.path, self._busy_timeout_seconds)
        try:
            prepare_writable(
                conn,
                self.path,
                busy_timeout_seconds=self._busy_timeout_seconds,
                synchronous=self._synchronous,
                wal_pages=self.wal_budget_pages(),
                checkpoint_on_close=self._checkpoint_on_close,
            )
        except BaseException:
            self._failed_side_ids = side_ids(self.path)  # what a lost-WAL retry must leave
            conn.close()
            raise
        self._conn, self._conn_pid = conn, os.getpid()
        sides = side_ids(self.path)  # opened by the schema check's reads
        self._side_ids = sides if None not in sides else None  # (none to compare: never a false alarm)
        return conn

    def wal_budget_pages(self) -> int:
        """Pages the WAL may hold before a checkpoint: a quarter of max_bytes, 4 to 1000 pages."""
        return wal_pages_for(self.max_bytes)

    def disk_bytes(self) -> int:
        """What the spool's files take on disk now: the database, its WAL and the WAL index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _rejoin(self) -> sqlite3.Connection:
        """Leave a connection whose WAL files are not the ones on disk; join the spool on disk again."""
        import oneiric_session.spool.rejoin as spool_rejoin

        old, held = self._conn, self._side_ids or self._failed_side_ids or (None, None)
        self._conn, self._side_ids, self._failed_side_ids = None, None, None
        return spool_rejoin.join_again(old, held, self.path, self._connection, self._clock)

    def _recover(self, exc: BaseException) -> None:
        """Move the corrupt file (and its WAL) aside, once, so the next connection starts fresh."""
        self.close()
        aside = move_aside(self.path, self._file_id, self._clock)
        if aside is None:
            return
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
        except (sqlite3.Error, NeedsFreshSpool, OSError) as err:
            raise SpoolError(f"spool {self.path} cannot be started afresh: {err}") from err
