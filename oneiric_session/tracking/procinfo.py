"""Who a pid is: its start time and the machine's boot id, so a reused pid or a reboot is recognized.

Linux reads /proc; elsewhere the start time and boot id are None and only the pid's
existence is checked. Standard library only: the shell records its own identity.

A pid means something only on its host and in its PID namespace: a shell in a container
sharing the state directory, or on another host sharing an NFS home, records its host name
and PID namespace too, and `is_visible` tells whether this process can judge that pid at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from oneiric_session.common.record import Record

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"
_SELF_PID_NS = _PROC / "self" / "ns" / "pid"
# Fields of /proc/<pid>/stat after the ")" that closes the command name (which may hold spaces).
_STATE_FIELD = 0
_STARTTIME_FIELD = 19


_UNREAD = object()
_boot_id: object = _UNREAD  # boot_id(), once read
_own: ProcessIdentity | None = None  # identify() of this process, once read


class ProcessIdentity(Record):
    pid: int
    start_time: int | None
    boot_id: str | None


class Origin(Record):
    """Where a pid means something: a host name and a PID namespace ("pid:[4026531836]")."""

    host: str | None
    pid_ns: str | None


def origin() -> Origin:
    """This process's host name and PID namespace, recorded with each start (see is_visible)."""
    return Origin(host_name(), pid_namespace())


def host_name() -> str | None:
    """This machine's host name, or None if it has none."""
    try:
        return os.uname().nodename or None
    except (AttributeError, OSError):  # pragma: no cover - not POSIX
        return None


def pid_namespace(pid: int | None = None) -> str | None:
    """The PID namespace of `pid` (default: this process), e.g. "pid:[4026531836]"; None if unknown."""
    path = _SELF_PID_NS if pid is None else _PROC / str(pid) / "ns" / "pid"
    try:
        return os.readlink(path) or None
    except (OSError, ValueError):
        return None


def is_visible(host: str | None, pid_ns: str | None) -> bool:
    """True when a pid recorded on `host` in PID namespace `pid_ns` is one this process can judge.

    A pid of another host or another PID namespace names some unrelated process here (or
    none): it says nothing about whether that shell lives. Unknown parts (None: recorded by
    an older version, or not readable here) are not held against it.
    """
    if host is not None:
        here = host_name()
        if here is not None and here != host:
            return False
    if pid_ns is not None:
        here_ns = pid_namespace()
        if here_ns is not None and here_ns != pid_ns:
            return False
    return True


def boot_id() -> str | None:
    """This boot's random id (Linux), or None where the system does not expose one (read once: a
    process lives within one boot)."""
    global _boot_id
    if _boot_id is _UNREAD:
        try:
            _boot_id = _read(_BOOT_ID).decode("ascii").strip() or None
        except (OSError, ValueError):
            _boot_id = None
    return _boot_id  # type: ignore[return-value]  # read above


def _read(path: Path) -> bytes:
    """A small /proc file's bytes (os.read: a shell reads two before its prompt, and `read_text`'s
    text layer costs 5 times as much)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = _read(_PROC / str(pid) / "stat")
    except (OSError, ValueError):
        return None
    # Only what follows the command name is read: the name is any bytes (cut at 15, maybe inside a
    # character), the rest ASCII figures.
    fields = data.rpartition(b")")[2].decode("ascii", "replace").split()
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
    """The identity of `pid` (default: this process, read once per process) to store with its session."""
    global _own
    if pid is None:
        if _own is None or _own.pid != os.getpid():  # (a forked child is another process)
            _own = identify(os.getpid())
        return _own
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
