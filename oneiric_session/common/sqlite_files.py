"""An SQLite database in WAL mode as several processes share its files (standard library only).

SQLite waits (busy_timeout) for the locks of reads and writes, but not for the one that switches a
file's journal mode: two processes opening a brand-new file at once, each switching it to WAL,
see one of them fail at once ("database is locked", even "disk I/O error"). So a file that is not
a WAL database yet is opened under `directory_lock`, and one process makes it one while the others
wait; a file in WAL mode already (its header: `is_wal_database`; the server's store asks SQLite,
`PRAGMA journal_mode`, and opens no descriptor of its own on the file) is opened without it. The
same lock serializes replacing a database's files (a damaged spool moved aside, a spool joined
again after its WAL files were deleted). Used by the spool (spool/connection.py, spool/opening.py,
spool/recovery.py, spool/rejoin.py) and the bundled server's store (server/store.py), which
lists with `read_only_connection` a database this user may only read.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "SQLITE_MAGIC",
    "database_present",
    "directory_lock",
    "is_wal_database",
    "read_only_connection",
]

# The first 16 bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def database_present(path: str | os.PathLike[str], what: str) -> bool:
    """Whether the database file at `path` (`what`: "spool", "session database") is there for a
    command that must not create it: False when it, or a directory on its way, does not exist (or
    the path is too long to name one); OneiricSessionError when it cannot be looked at (permission
    denied): reading on as if it were absent would report an unreadable spool as empty."""
    from oneiric_session.common.paths import nothing_there
    from oneiric_session.errors import OneiricSessionError

    try:
        st = os.stat(path)
    except OSError as exc:
        if nothing_there(exc):
            return False
        problem = f"cannot be examined ({exc.strerror or exc})"
    else:
        if stat.S_ISREG(st.st_mode):
            return True
        problem = "is not a regular file"  # a FIFO would hold the reader for ever
    # The reason before the path: a long path is cut short where the message is shown.
    raise OneiricSessionError(f"{what} {problem}: {os.fspath(path)}")


def is_wal_database(header: bytes) -> bool:
    """Whether `header` (a file's first bytes) starts an SQLite database in WAL mode: its format
    versions (bytes 18 and 19) are 2, written to the file itself when it was switched."""
    return header.startswith(SQLITE_MAGIC) and header[18:20] == b"\x02\x02"


@contextlib.contextmanager
def directory_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock on the directory of the database at `path`, across processes (flock).

    Reentrant in a thread, by the directory's identity, not its spelling (a second flock from the
    same thread would wait on itself). Best effort where the directory cannot be opened for
    reading (mode 0300) or there is no flock: SQLite's own locking is then all there is.
    """
    try:
        import fcntl

        fd = os.open(Path(path).parent, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, PermissionError):  # pragma: no cover - not POSIX, or not readable
        yield
        return
    try:
        st = os.fstat(fd)
        directory = (st.st_dev, st.st_ino)
        held: set[tuple[int, int]] = _held.__dict__.setdefault("directories", set())
        if directory in held:  # this thread holds it already
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(directory)
        try:
            yield
        finally:
            held.discard(directory)
    finally:
        os.close(fd)


_held = threading.local()


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that never writes to the database at `path`: read-only, or, where even that
    needs a write (a WAL database whose shared-memory file cannot be made in a read-only
    directory), reading it as immutable (nothing else may write it meanwhile: a backup, a mount)."""
    uri = path.resolve().as_uri()
    try:
        return _reader(f"{uri}?mode=ro")
    except sqlite3.OperationalError:
        return _reader(f"{uri}?mode=ro&immutable=1")


def _reader(uri: str) -> sqlite3.Connection:
    db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    db.row_factory = sqlite3.Row
    return db
