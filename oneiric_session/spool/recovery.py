"""The spool's file-level recovery: files moved, replaced or corrupt, and which errors say so.

`SpoolConnection` (spool/connection.py) compares, before each use, the database file and its
`-wal` and `-shm` files with the ones it opened (device and inode): a database moved away or
replaced is followed by its path, deleted WAL files are joined again (spool/rejoin.py). When
SQLite finds the file damaged or foreign, `move_aside` moves it (and its WAL) aside, once, under
a lock on its directory (`common.sqlite_files.directory_lock`) that every process writing the
spool takes: the agent, `spool replay`. The first opener of a new file holds it too while it makes
the file a WAL spool.

Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from oneiric_session.common.sqlite_files import directory_lock
from oneiric_session.errors import SpoolError
from oneiric_session.spool.schema import NeedsFreshSpool

__all__ = [
    "FileId",
    "SideIds",
    "file_key",
    "is_corruption",
    "is_lost_wal",
    "side_ids",
    "start_afresh",
    "still_in_place",
]

logger = logging.getLogger("oneiric_session.spool")

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_IOERR_SHORT_READ = 522

# A file as (device, inode); the -wal and -shm files of a spool as such (None: absent).
FileId = tuple[int, int]
SideIds = tuple[FileId | None, FileId | None]


def file_key(path: str | os.PathLike[str]) -> FileId | None:
    """(device, inode) of the file at `path` now (None: absent or unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def side_ids(path: str | os.PathLike[str]) -> SideIds:
    """(device, inode) of the spool's `-wal` and `-shm` files as they are on disk now."""
    return file_key(f"{os.fspath(path)}-wal"), file_key(f"{os.fspath(path)}-shm")


def still_in_place(path: Path, file_id: FileId | None) -> bool:
    """Whether the file at `path` is still `file_id`: not moved aside nor deleted by another process."""
    found = file_key(path)
    return found is not None and found == file_id


def is_lost_wal(exc: BaseException) -> bool:
    """SQLITE_IOERR_SHORT_READ: the WAL index names frames the WAL on disk does not have."""
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_IOERR_SHORT_READ


def is_corruption(exc: BaseException) -> bool:
    """Not a database, or a damaged one: the only errors that justify starting afresh."""
    if isinstance(exc, NeedsFreshSpool):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def move_aside(path: Path, file_id: FileId | None, clock: Callable[[], float]) -> Path | None:
    """Move the unusable spool at `path` (and its WAL) aside; where it went (None: nothing to move).

    `file_id` is the file found unusable: another in its place was put there by a process that
    already moved it aside. Raises SpoolError if it cannot be moved.
    """
    with directory_lock(path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if file_id is not None and (st.st_dev, st.st_ino) != file_id:
            return None  # another process already replaced it
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(path, aside)
            wal = Path(f"{path}-wal")
            if wal.exists():
                os.replace(wal, Path(f"{aside}-wal"))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}-shm")
        except OSError as err:
            raise SpoolError(f"spool {path} is unusable and cannot be moved aside: {err}") from err
    return aside


def start_afresh(
    path: Path,
    file_id: FileId | None,
    exc: BaseException,
    clock: Callable[[], float],
    connect: Callable[[], sqlite3.Connection],
) -> None:
    """Move the spool `file_id`, found unusable (`exc`), aside; `connect` makes the fresh one, which
    remembers where the old one went (so `status` can say where its events are). SpoolError if not."""
    try:
        aside = move_aside(path, file_id, clock)
    except OSError as err:
        raise SpoolError(f"spool {path} is unusable and cannot be replaced: {err}") from err
    if aside is None:
        return  # another process moved it aside already
    logger.warning(
        "spool %s was unusable (%s); moved it aside to %s and started a fresh one", path, exc, aside.name
    )
    try:
        connect().execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('moved_aside', ?)", (str(aside),))
    except (sqlite3.Error, NeedsFreshSpool, OSError) as err:
        raise SpoolError(f"spool {path} cannot be started afresh: {err}") from err
