"""Who a pid is: its start time and the machine's boot id, so a reused pid or a reboot is recognized.

Linux reads /proc; elsewhere the start time and boot id are None and only the pid's
existence is checked. Standard library only: the shell records its own identity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"
# Fields of /proc/<pid>/stat after the ")" that closes the command name (which may hold spaces).
_STATE_FIELD = 0
_STARTTIME_FIELD = 19


class ProcessIdentity(NamedTuple):
    pid: int
    start_time: int | None
    boot_id: str | None


def boot_id() -> str | None:
    """This boot's random id (Linux), or None where the system does not expose one."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    return fields if len(fields) > _STARTTIME_FIELD else None


def pid_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux), or None if unknown or gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        return int(fields[_STARTTIME_FIELD])
    except ValueError:
        return None


def identify(pid: int | None = None) -> ProcessIdentity:
    """The identity of `pid` (default: this process) to store with its session."""
    pid = os.getpid() if pid is None else pid
    return ProcessIdentity(pid, pid_start_time(pid), boot_id())


def is_alive(pid: int, start_time: int | None, boot: str | None) -> bool:
    """True while the process recorded as (pid, start_time, boot) is still running.

    False after a reboot (different boot id), when the pid is gone or a zombie, or when
    the pid now belongs to another process (different start time). Unknown parts
    (None, or not readable on this system) are not held against the process.
    """
    if pid <= 0:
        return False
    current_boot = boot_id()
    if boot is not None and current_boot is not None and boot != current_boot:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        # Gone between the two checks, or no /proc here: trust the signal check only where /proc is absent.
        return not _PROC.joinpath(str(os.getpid())).exists()
    if fields[_STATE_FIELD] in ("Z", "X"):
        return False  # dead, waiting to be reaped
    return start_time is None or str(start_time) == fields[_STARTTIME_FIELD]
