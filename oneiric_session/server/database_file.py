"""The session database's file by path: made private, told apart from one put in its place, and
the files a deleted one left removed.

Never through a descriptor of a file that is there: closing any descriptor of a file drops every
POSIX lock the process holds on it, SQLite's own ("How To Corrupt An SQLite Database File", 2.2).
A store's connection (or any other of the process) would lose its lock on the database and on the
WAL index it maps; a process opening the database next would take itself for its only user,
truncate that index under us (SIGBUS) or checkpoint and delete the WAL a store still writes to.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from oneiric_session.common.privacy import private_dir
from oneiric_session.common.sqlite_files import directory_lock

__all__ = ["file_identity", "make_private"]


def make_private(path: Path) -> None:
    """Sessions are private (user names, homes, hosts, cwds): the directory 0700 when we create it,
    the database 0600 whatever the umask (SQLite gives its WAL and SHM the database's mode). A
    descriptor is opened only to create the file, which no connection can have open yet."""
    real = os.path.realpath(path)
    private_dir(os.path.dirname(real))
    if not os.path.lexists(real):
        with directory_lock(real):  # no other process makes it, or its WAL files, meanwhile
            _make_new(real)
    for name in (real, f"{real}-wal", f"{real}-shm"):
        try:
            st = os.lstat(name)
            # A file its owner may write, made under a lax umask or left so by an older version; one
            # made read-only (a backup kept) is left as it is, and SQLite reads it as it is.
            lax, writable = st.st_mode & 0o077, st.st_mode & stat.S_IWUSR
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and lax and writable:
                os.chmod(name, 0o600)
        except OSError:
            continue  # not there, or not ours


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _make_new(real: str) -> None:
    """The database file at `real`, made 0600 if it is not there, after removing the -wal and -shm
    a deleted one left by name: beside a new file they would fail every write ("disk I/O error").
    A process still using the deleted file keeps its own open, and SQLite's close of a moved
    database neither checkpoints nor deletes."""
    if os.path.lexists(real):
        return
    for name in (f"{real}-wal", f"{real}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    # (Not ours to make: SQLite says what it can and cannot do with it.)
    with contextlib.suppress(OSError):
        os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
