"""The spool's connection, one per process: reads and writes that recover, and the meta table.

Used by the agent (which takes the shells' outbox in and delivers), by the command line (read-only
for `status` and `spool list`), and by tests; a shell never opens the database (spool/outbox.py).
SpoolConnection knows nothing of rows: `Intake` (spool/intake.py) builds the appends and the
agent's queue in `with self.transaction() as conn:` (one BEGIN IMMEDIATE transaction) and
`with self.reading() as conn:`. Both deal first with what can be found before the block runs (a
file moved, replaced or written over in place, lost WAL files), so the block runs once, on the
spool on disk. It opens the file through spool/opening.py, follows a file moved or replaced and
moves a corrupt one aside through spool/recovery.py, and joins again after its WAL files were
deleted through spool/rejoin.py. A small key-value table (meta) lives here too:
recovery records in it where the corrupt file went (`MetaTable`, spool/meta.py, reads and writes it).

Standard library only (`status` reads it without importing mcp or pydantic).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from oneiric_session.common.privacy import foreign_reason, refusal
from oneiric_session.common.sqlite_files import directory_lock, is_wal_database
from oneiric_session.errors import SpoolError, UnsafeSpoolError
from oneiric_session.spool.descriptors import header_of, hold, release, written_over
from oneiric_session.spool.opening import (
    OPEN_TRIES,
    connect,
    create_file,
    make_parent,
    open_read_only,
    prepare_writable,
    wal_pages_for,
)
from oneiric_session.spool.recovery import (
    FileId,
    SideIds,
    is_corruption,
    is_lost_wal,
    side_ids,
    start_afresh,
    still_in_place,
)
from oneiric_session.spool.schema import NeedsFreshSpool
from oneiric_session.spool.transaction import committed, started

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_SECONDS",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "SpoolConnection",
]

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_AGE_SECONDS = 30 * 86400.0
# A writer waits this long for another process's transaction; every transaction is short.
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0


class SpoolConnection:
    """One connection to the spool at `path`, for one process (it reopens after fork). Thread-safe.

    `transaction` and `reading` raise only SpoolError (after recovery from corruption was tried).
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
        self._held: FileId | None = None  # the file whose header we read (spool/descriptors.py)
        # The -wal and -shm files this connection opened (see spool/rejoin.py): compared before each use.
        self._side_ids: SideIds | None = None
        self._failed_side_ids: SideIds | None = None
        # A connection inherited across fork is kept referenced, never used nor closed by the child.
        self._inherited: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (creating or recovering) the spool now; raises SpoolError if it cannot be used."""
        with self.reading():
            pass

    def close(self) -> None:
        """Close the connection; idempotent. Any later call opens it again."""
        with self._lock:
            conn, self._conn = self._conn, None
            held, self._held = self._held, None
            if conn is not None and self._conn_pid != os.getpid():
                self._inherited = conn
                return
            if conn is not None:
                import oneiric_session.spool.rejoin as spool_rejoin

                spool_rejoin.close(conn, self.path, self._file_id, self._side_ids)
            release(held)  # after the connection: closing a descriptor first would drop its locks

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, *, sync: bool = False) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction around the block, on the spool as it is on disk now:
        trouble is looked for before the block, so the block runs once, on the right file (`_usable`).
        Damage first met inside it is dealt with too, but that write is not made and SpoolError says
        so (no input is lost: the outbox keeps a record until the spool holding it is on disk).
        `sync`: the commit is flushed even on a `durable=False` connection (no other copy exists)."""
        with self._lock, self._mapped_errors("a write, which was not made"):
            flushed = sync and self._synchronous != "FULL"
            conn = self._usable(begin=True, flushed=flushed)
            try:
                with committed(conn):
                    yield conn
            finally:
                if flushed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads in the block, found usable first as `transaction` finds it."""
        with self._lock, self._mapped_errors("a read"):
            yield self._usable(begin=False)

    def _usable(self, *, begin: bool, flushed: bool = False) -> sqlite3.Connection:
        """The connection, a file moved or replaced followed, lost WAL files joined again and a corrupt
        file (one written over in place too) moved aside first; a write transaction begun on it if
        `begin` (`flushed`: with synchronous=FULL till its end)."""
        restore = self._synchronous if flushed else None

        def ready(conn: sqlite3.Connection) -> sqlite3.Connection:
            return started(conn, restore=restore) if begin else conn

        try:
            return ready(self._connection())
        except (sqlite3.Error, NeedsFreshSpool) as exc:
            if is_lost_wal(exc):
                return ready(self._rejoin())
            if not is_corruption(exc):
                raise
            failure: BaseException = exc
        self._recover(failure)
        try:
            return ready(self._connection())
        except (sqlite3.Error, NeedsFreshSpool, OSError) as exc:
            raise SpoolError(f"spool {self.path} cannot be used even when started afresh: {exc}") from exc

    @contextlib.contextmanager
    def _mapped_errors(self, work: str) -> Iterator[None]:
        """The one place SQLite's and the file system's errors become SpoolError (`work`: the block's)."""
        try:
            yield
        except (sqlite3.Error, NeedsFreshSpool) as exc:
            lost = is_lost_wal(exc)
            if not lost and not is_corruption(exc):
                raise SpoolError(f"spool {self.path} cannot be used: {exc}") from exc
            try:  # found only inside the block: dealt with for the next use
                if lost:
                    self._rejoin()
                else:
                    self._recover(exc)
            except (sqlite3.Error, NeedsFreshSpool, OSError) as err:
                raise SpoolError(f"spool {self.path} cannot be used: {exc}; and then: {err}") from err
            found, done = ("without its WAL files", "joined again") if lost else ("damaged", "moved aside")
            raise SpoolError(
                f"spool {self.path} was found {found} during {work} ({exc}); it was {done} for what follows"
            ) from exc
        except OSError as exc:
            raise SpoolError(f"spool {self.path} cannot be used: {exc.strerror or exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._conn_pid == os.getpid():
            if still_in_place(self.path, self._file_id):
                if self._side_ids is not None and side_ids(self.path) != self._side_ids:
                    return self._rejoin()  # its WAL or WAL index was deleted: see spool/rejoin.py
                if self._held is not None and written_over(self._held):  # found before the work
                    raise NeedsFreshSpool("it was written over: its header is no SQLite database's")
                return self._conn
            self.close()  # moved aside or deleted by another process: follow the path
        if self._conn_pid != os.getpid():  # a child after fork: the parent's connection and hold
            self._held = None
            if self._conn is not None:
                self._inherited, self._conn = self._conn, None
        reason = foreign_reason(self.path)
        if reason is not None:
            raise UnsafeSpoolError(refusal(f"spool {self.path}", reason))
        if self._read_only:
            conn, self._file_id, held = open_read_only(self.path, self._busy_timeout_seconds)
            self._conn, self._conn_pid = conn, os.getpid()
            self._keep(held)
            return conn
        held = hold(self.path)  # before SQLite opens it (spool/descriptors.py); None: none yet
        header = header_of(held) if held is not None else None
        if header is not None and is_wal_database(header):
            try:
                opened = self._writable_connection(held)  # (releases `held` unless it returns one)
            except sqlite3.Error:
                if still_in_place(self.path, held):
                    raise
            else:
                if opened is not None:
                    return opened
            # Replaced between our look and our open (moved aside, made anew): a new file.
        else:
            release(held)
        # A new file becomes a WAL spool in one process at a time; the others wait for it.
        make_parent(self.path)
        with directory_lock(self.path):
            for _ in range(OPEN_TRIES):
                opened = self._writable_connection(create_file(self.path))
                if opened is not None:
                    return opened
        raise SpoolError(f"spool {self.path} was replaced again and again while it was opened")

    def _writable_connection(self, file_id: FileId | None) -> sqlite3.Connection | None:
        """A connection to the file `file_id` at the path, which the caller holds (released on failure;
        recovery moves aside only this file); None if another was put in its place meanwhile."""
        self._file_id = file_id
        try:
            conn = connect(self.path, self._busy_timeout_seconds)
        except BaseException:
            release(file_id)
            raise
        try:
            prepare_writable(
                conn,
                self.path,
                busy_timeout_seconds=self._busy_timeout_seconds,
                synchronous=self._synchronous,
                wal_pages=wal_pages_for(self.max_bytes),
                checkpoint_on_close=self._checkpoint_on_close,
            )
        except BaseException as exc:
            self._failed_side_ids = side_ids(self.path)  # what a lost-WAL retry must leave
            conn.close()
            release(file_id)
            if isinstance(exc, sqlite3.Error | NeedsFreshSpool) and not still_in_place(self.path, file_id):
                return None  # the file SQLite found was put in place meanwhile: open that one
            raise
        if not still_in_place(self.path, file_id):  # (SQLite's close never drops others' locks)
            conn.close()
            release(file_id)
            return None
        self._conn, self._conn_pid = conn, os.getpid()
        self._keep(file_id)
        sides = side_ids(self.path)  # opened by the schema check's reads
        self._side_ids = sides if None not in sides else None  # (none to compare: never a false alarm)
        return conn

    def _keep(self, held: FileId | None) -> None:
        """`held` is the file the connection now has open: its header is read from now on."""
        old, self._held = self._held, held
        release(old)  # (after the new hold was taken: the same file's descriptors stay open)

    def _rejoin(self) -> sqlite3.Connection:
        """Leave a connection whose WAL files are not the ones on disk; join the spool on disk again."""
        import oneiric_session.spool.rejoin as spool_rejoin

        old, held = self._conn, self._side_ids or self._failed_side_ids or (None, None)
        self._conn, self._side_ids, self._failed_side_ids = None, None, None
        return spool_rejoin.join_again(old, held, self.path, self._connection, self._clock)

    def _recover(self, exc: BaseException) -> None:
        """Move the corrupt file (and its WAL) aside, once, so the next connection starts fresh.

        Raises SpoolError (never moving a file) on a read-only connection.
        """
        if self._read_only:
            raise SpoolError(
                f"{self.path} is not a usable spool ({exc}); left untouched (only the agent "
                "or `spool replay` moves such a file aside)"
            ) from exc
        self.close()
        file_id, self._file_id = self._file_id, None
        start_afresh(self.path, file_id, exc, self._clock, self._connection)
