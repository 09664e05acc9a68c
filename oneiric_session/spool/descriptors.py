"""The spool file's header, read through a descriptor this process keeps while SQLite has the file.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's own
included ("How To Corrupt An SQLite Database File", 2.2): a WAL database's last user would then
think itself alone, checkpoint and delete the WAL under the others. So while a connection of
ours has a spool file open, its header is read through one descriptor per file (device, inode)
per process, opened with the first connection and closed after the last one closed (`hold`,
`release`); `read_header` opens and closes one of its own only for a file no connection holds.
A child after fork keeps the descriptors it inherited open and unused.

Standard library only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from oneiric_session.spool.recovery import FileId

__all__ = ["header_of", "hold", "read_header", "release"]

# What is read of a file: the SQLite header's length.
_HEADER_BYTES = 100

_lock = threading.Lock()
_held: dict[FileId, list[int]] = {}  # file -> [descriptor, holders]
_kept: list[int] = []  # descriptors never to close here (inherited, or met in a race)


def read_header(path: Path) -> tuple[FileId, bytes]:
    """The file at `path`: its id and first 100 bytes. Raises FileNotFoundError when there is none."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    except OSError:
        _kept.append(fd)  # not known to be none of ours: never closed
        raise
    file_id = (st.st_dev, st.st_ino)
    try:
        return file_id, os.pread(fd, _HEADER_BYTES, 0)
    finally:
        _close_unless_held(fd, file_id)


def header_of(file_id: FileId) -> bytes | None:
    """The first 100 bytes of the held file `file_id` as they are now (None: not held here)."""
    with _lock:
        entry = _held.get(file_id)
        return None if entry is None else os.pread(entry[0], _HEADER_BYTES, 0)


def hold(path: Path, file_id: FileId) -> bool:
    """One more holder of `file_id`, which a connection of ours now has open at `path`; False if
    the file at `path` is no longer `file_id` (nothing is held then)."""
    with _lock:
        entry = _held.get(file_id)
        if entry is not None:
            entry[1] += 1
            return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    st = os.fstat(fd)
    found = (st.st_dev, st.st_ino)
    with _lock:
        if found == file_id and file_id not in _held:
            _held[file_id] = [fd, 1]
            return True
        if found == file_id:  # another thread held it meanwhile
            _held[file_id][1] += 1
            _kept.append(fd)
            return True
    _close_unless_held(fd, found)
    return False


def release(file_id: FileId | None) -> None:
    """One holder fewer (called after its SQLite connection closed); the last closes the descriptor."""
    if file_id is None:
        return
    with _lock:
        entry = _held.get(file_id)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[file_id]
    os.close(entry[0])


def _close_unless_held(fd: int, file_id: FileId) -> None:
    with _lock:
        if file_id not in _held:
            os.close(fd)
        else:  # a connection of ours has this file open: closing would drop its locks
            _kept.append(fd)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _kept.extend(fd for fd, _ in _held.values())
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
