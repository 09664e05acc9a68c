"""SQLite's locks on a database's files as another process sees them: a child process tries the lock.

A byte range another process (ours included) may lock exclusively is held by nobody. SQLite's unix
VFS: the WAL index's dead-man switch is byte 128 of the -shm (a process that may lock it takes
itself for the index's only user, and truncates and rebuilds it); every connection in WAL mode
read-locks the database file's SHARED range (PENDING_BYTE + 2, 510 bytes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["index_lock", "shared_lock"]

_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
except OSError:
    print("held")
else:
    print("free")
"""

_DMS_BYTE = 128
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510


def _lock(path: Path | str, offset: int, length: int) -> str:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(offset), str(length)],
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip()


def index_lock(path: Path) -> str:
    """ "held" or "free": the lock on the WAL index of the database at `path`."""
    return _lock(f"{path}-shm", _DMS_BYTE, 1)


def shared_lock(path: Path) -> str:
    """ "held" or "free": the SHARED lock on the database file at `path`."""
    return _lock(path, _SHARED_FIRST, _SHARED_SIZE)
