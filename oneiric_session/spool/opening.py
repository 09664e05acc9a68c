"""Opening one SQLite connection to the spool: its private file, the pragmas, the schema check.

`SpoolConnection` (spool/connection.py) opens through these, in every process of the spool: a
writer's (durable commits), the agent's (commits without fsync), and the
read-only one of `status` and `spool list`, which never creates, converts nor moves a file.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import sys
from pathlib import Path

from oneiric_session.common.sqlite_files import SQLITE_MAGIC, directory_lock, is_wal_database
from oneiric_session.errors import SpoolError
from oneiric_session.spool.descriptors import adopt, hold, read_header, release
from oneiric_session.spool.records import Undecodable
from oneiric_session.spool.recovery import FileId, file_key
from oneiric_session.spool.schema import SCHEMA_VERSION, TABLES, NeedsFreshSpool, check_schema

__all__ = [
    "OPEN_TRIES",
    "connect",
    "create_file",
    "disk_bytes",
    "make_parent",
    "open_read_only",
    "prepare_writable",
    "wal_pages_for",
]

# SQLite's default page size, and its default WAL auto-checkpoint (pages); the least we allow.
_PAGE_BYTES = 4096
_DEFAULT_WAL_PAGES = 1000
# Opens of a file replaced while it was being opened, before giving up.
OPEN_TRIES = 3
_MIN_WAL_PAGES = 4


def wal_pages_for(max_bytes: int) -> int:
    """Pages the WAL may hold before a checkpoint: a quarter of max_bytes, 4 to 1000 pages."""
    return max(_MIN_WAL_PAGES, min(_DEFAULT_WAL_PAGES, max_bytes // 4 // _PAGE_BYTES))


def create_file(path: Path) -> FileId | None:
    """The spool file at `path`, created private (0600, in 0700 directories) if missing, and held
    (`descriptors.hold`: the caller releases it); its id.

    Called under `directory_lock`, so the file we create is empty only while we hold that lock (one
    left empty by a crash is simply made a spool by its next opener)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    file_id = adopt(fd)  # closed with the file's last release, never before
    try:
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, 0o600)  # we may have created it: 0600 whatever the umask says
    except BaseException:
        release(file_id)
        raise
    return file_id


def disk_bytes(path: Path) -> int:
    """What the spool's files take on disk now: the database, its WAL and the WAL index."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _check_header(header: bytes) -> None:
    """NeedsFreshSpool unless `header` starts an SQLite database."""
    if not header:
        raise NeedsFreshSpool("an empty file")
    if not header.startswith(SQLITE_MAGIC):
        raise NeedsFreshSpool("not an SQLite database")


def connect(path: Path, busy_timeout_seconds: float) -> sqlite3.Connection:
    """A connection in autocommit mode (the spool runs its own transactions), usable by any thread,
    to the file at `path`, which it never creates (`create_file` does, private, under the lock).
    A stored text that is no UTF-8 (a byte damaged on disk: SQLite keeps no checksum of a value)
    reads as `Undecodable`, that byte replaced, not as an error that fails every read of its row:
    a row whose payload reads so is damaged (`records.event_from_row`)."""
    conn = sqlite3.connect(
        f"{path.absolute().as_uri()}?mode=rw",
        uri=True,
        timeout=busy_timeout_seconds,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.text_factory = _text
    return conn


def _text(stored: bytes) -> str:
    try:
        return stored.decode("utf-8")
    except UnicodeDecodeError:
        return Undecodable(stored.decode("utf-8", "replace"))


def prepare_writable(
    conn: sqlite3.Connection,
    path: Path,
    *,
    busy_timeout_seconds: float,
    synchronous: str,
    wal_pages: int,
    checkpoint_on_close: bool,
) -> None:
    """Set up `conn` to the spool at `path`: WAL mode, `synchronous`, the WAL's budget (`wal_pages`),
    then the schema (created or grown)."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise SpoolError(f"spool {path}: WAL mode is not available here")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # The WAL is part of what the spool takes on disk: checkpoint it before it outgrows a
    # quarter of max_bytes, and truncate it back to that after (default cap: SQLite's defaults).
    conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
    conn.execute(f"PRAGMA journal_size_limit = {wal_pages * _PAGE_BYTES}")
    conn.execute("PRAGMA temp_store = MEMORY")  # drops use a small temp table
    if (
        sys.version_info >= (3, 12)  # Connection.setconfig
        and not checkpoint_on_close
        and hasattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE")
    ):
        # Closing the last connection would checkpoint the WAL (~10-30 ms of fsyncs).
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
    check_schema(conn)


def open_read_only(
    path: Path, busy_timeout_seconds: float
) -> tuple[sqlite3.Connection, FileId, FileId | None]:
    """A connection that changes nothing, to the spool at `path`; the file's id; the file held for
    it (`descriptors.hold`, taken before SQLite opened it; the caller releases it after closing)."""
    for _ in range(OPEN_TRIES):
        held = hold(path)
        try:
            conn, file_id = _open_read_only(path, busy_timeout_seconds)
        except BaseException:
            release(held)
            raise
        if held is not None and held == file_id == file_key(path):
            return conn, file_id, held
        conn.close()  # replaced while we opened it: SQLite may have the other file
        release(held)
    raise SpoolError(f"spool {path} was replaced again and again while it was opened")


def _open_read_only(path: Path, busy_timeout_seconds: float) -> tuple[sqlite3.Connection, FileId]:
    """A connection that changes nothing, to the spool at `path`, and the file's id.

    NeedsFreshSpool unless the file is a spool of this schema. A file not yet one may be being
    made one by its first opener: that is waited for (`directory_lock`), then the file looked at again.
    """
    file_id, header = read_header(path)
    if is_wal_database(header):
        with contextlib.suppress(NeedsFreshSpool):
            return _read_only(path, busy_timeout_seconds), file_id
    with directory_lock(path):
        file_id, header = read_header(path)  # as its first opener left it
        _check_header(header)
        return _read_only(path, busy_timeout_seconds), file_id


def _read_only(path: Path, busy_timeout_seconds: float) -> sqlite3.Connection:
    conn = connect(path, busy_timeout_seconds)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
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
    return conn


def make_parent(path: Path) -> None:
    """Create the missing directories above the spool, each private to the user (0700)."""
    missing = []
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
                directory.chmod(0o700)  # whatever the umask says
        if not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way")
    except OSError as exc:
        raise SpoolError(f"spool directory {path.parent} cannot be created: {exc.strerror or exc}") from exc
