"""The spool's connection: opening, transactions, recovery from a corrupt or replaced file.

SpoolConnection knows nothing of rows: `Spool` (spool/outbox.py) builds the shell's appends and
the agent's queue on `_write` (one BEGIN IMMEDIATE transaction) and `_read`. Both take a
callback, not a `with` block, because after a corrupt file was moved aside the same work runs
once more on the fresh spool. A small key-value table (meta) lives here too: recovery records
in it where the corrupt file went, and the agent publishes its status through it.

Standard library only: every shell imports the spool.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

from oneiric_session.errors import SpoolError, UnsafeSpoolError
from oneiric_session.privacy import foreign_reason
from oneiric_session.spool.schema import SCHEMA_VERSION, TABLES, NeedsFreshSpool, check_schema
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
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR_SHORT_READ = 522
# SQLite's default page size, and its default WAL auto-checkpoint (pages); the least we allow.
_PAGE_BYTES = 4096
_DEFAULT_WAL_PAGES = 1000
_MIN_WAL_PAGES = 4

_T = TypeVar("_T")


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
    if isinstance(exc, NeedsFreshSpool):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


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
        # The -wal and -shm files this connection opened (see spool/rejoin.py): compared before each use.
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

    # ----------------------------------------------------------------- internals: connection

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` in one BEGIN IMMEDIATE transaction, recovering once from a corrupt file."""

        def txn(conn: sqlite3.Connection) -> _T:
            with immediate(conn):
                return fn(conn)

        return self._read(txn)

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return fn(self._connection())
            except (sqlite3.Error, NeedsFreshSpool) as exc:
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
            if self._still_in_place():
                if self._side_ids is None or _side_ids(self.path) == self._side_ids:
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
            check_schema(conn)
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
        import oneiric_session.spool.rejoin as spool_rejoin

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
            raise NeedsFreshSpool("an empty file (a spool being created?)")
        if not header.startswith(b"SQLite format 3\x00"):
            raise NeedsFreshSpool("not an SQLite database")
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
                raise NeedsFreshSpool(f"an SQLite database that is not a spool (user_version {version})")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables >= TABLES:
                raise NeedsFreshSpool(f"an SQLite database without the tables {sorted(TABLES - tables)}")
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
        except (sqlite3.Error, NeedsFreshSpool, OSError) as err:
            raise SpoolError(f"spool {self.path} cannot be started afresh: {err}") from err


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
