"""The spool file's descriptors in this process: none is closed while SQLite may have the file open.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's own
included ("How To Corrupt An SQLite Database File", 2.2): a WAL database's last other user would
then think itself alone, checkpoint and delete the WAL under us. So a connection of ours `hold`s
its file before it opens it, and `release`s it after it closed; the descriptors of a held file
(one per (device, inode), plus any opened for it in a race) are closed with its last release.
The header is read through the held descriptor (`header_of`), or, for a file none of ours holds,
through one opened and closed here (`read_header`). Every close happens under this module's lock
and every hold is taken under it before the connection is made, so no close of ours can fall
between another thread's open and its hold. A child after fork keeps what it inherited, unused.

Standard library only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from oneiric_session.common.sqlite_files import SQLITE_MAGIC
from oneiric_session.spool.recovery import FileId, file_key

__all__ = ["adopt", "header_of", "hold", "read_header", "release", "written_over"]

_HEADER_BYTES = 100  # SQLite's header

_lock = threading.Lock()
_kept: list[int] = []  # descriptors never to close here (inherited across fork)


class _Held:
    """A held file: its descriptors (closed with the last holder) and how many hold it."""

    __slots__ = ("fds", "holders")

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.holders = 0

    def header(self) -> bytes:
        return os.pread(self.fds[0], _HEADER_BYTES, 0)


_held: dict[FileId, _Held] = {}


def hold(path: Path) -> FileId | None:
    """Hold the file now at `path` (its id), before a connection to it is opened; None if none is."""
    with _lock:
        file_id = file_key(path)
        if file_id is None:
            return None
        entry = _held.get(file_id)
        if entry is not None:  # held already: one holder more, no descriptor more
            entry.holders += 1
            return file_id
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return adopt(fd)


def adopt(fd: int) -> FileId | None:
    """Hold the file `fd` is open on, keeping `fd` until its last release; None if it cannot be told."""
    try:
        st = os.fstat(fd)
    except OSError:
        with _lock:
            _kept.append(fd)  # which file it is cannot be told: never closed
        return None
    file_id = (st.st_dev, st.st_ino)
    with _lock:
        entry = _held.setdefault(file_id, _Held())
        entry.fds.append(fd)
        entry.holders += 1
    return file_id


def release(file_id: FileId | None) -> None:
    """One holder fewer, after its connection closed; the last closes the file's descriptors."""
    if file_id is None:
        return
    with _lock:
        entry = _held.get(file_id)
        if entry is None:
            return
        entry.holders -= 1
        if entry.holders > 0:
            return
        del _held[file_id]
        for fd in entry.fds:
            os.close(fd)


def header_of(file_id: FileId) -> bytes | None:
    """The first 100 bytes of the held file `file_id` as they are now (None: not held here)."""
    with _lock:
        entry = _held.get(file_id)
        return None if entry is None else entry.header()


def written_over(file_id: FileId) -> bool:
    """Whether the held file `file_id` no longer starts as an SQLite database (written over in place)."""
    header = header_of(file_id)
    return header is not None and len(header) >= len(SQLITE_MAGIC) and not header.startswith(SQLITE_MAGIC)


def read_header(path: Path) -> tuple[FileId, bytes]:
    """The file at `path`: its id and first 100 bytes. Raises FileNotFoundError when there is none."""
    with _lock:
        st = os.stat(path)
        entry = _held.get((st.st_dev, st.st_ino))
        if entry is not None:
            return (st.st_dev, st.st_ino), entry.header()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            header = os.pread(fd, _HEADER_BYTES, 0)
        except BaseException:
            _kept.append(fd)
            raise
        file_id = (st.st_dev, st.st_ino)
        entry = _held.get(file_id)
        if entry is not None:  # replaced between the stat and the open by a file we hold
            entry.fds.append(fd)
        else:
            os.close(fd)  # under the lock: no connection of ours is being opened on it now
        return file_id, header


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for entry in _held.values():
        _kept.extend(entry.fds)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
