"""Build and sanitize the `track_session_start` / `track_session_end` arguments (CONTRACT.md section 1).

Runs inside the shell's process, so standard library only and cheap: hostile
input (huge strings, control bytes, odd objects, deep nesting) is cut *before*
any expensive work, and the result is always JSON-safe and within `Limits`.
The token is never part of an event: the transport adds it at send time.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oneiric_session.common.safetext import sanitize_text
from oneiric_session.tracking.limits import MAX_NAME_CHARS, Limits
from oneiric_session.tracking.metadata import is_finite, sanitize_metadata

if TYPE_CHECKING:  # the shell never imports datetime (~1 ms): timestamps come from `time`
    import datetime as _dt

__all__ = [
    "EVENT_VERSION",
    "build_end_event",
    "build_start_event",
    "sanitize_component_name",
    "sanitize_metadata",
]

EVENT_VERSION = "1.0"

# Field caps the real server enforces (CONTRACT.md); independent of the configurable Limits.
_MAX_USERNAME_CHARS = 100
_MAX_PATH_CHARS = 500
_MAX_PID = 4194304

_COMPONENT_BAD = r"[^A-Za-z0-9_-]+"


def sanitize_component_name(value: object, max_chars: int) -> str:
    """Force a component name into `[A-Za-z0-9_-]+` (what the server's regex accepts), non-empty."""
    raw = value if isinstance(value, str) else str(value)
    name = raw[: max_chars * 4]
    if not (name.isascii() and name.replace("_", "").replace("-", "").isalnum()):
        name = re.sub(_COMPONENT_BAD, "_", name)
    name = name.strip("_")[:max_chars]
    return name or "shell"


def _timestamp(now: _dt.datetime | None) -> str:
    """UTC ISO 8601 with a `Z`, as the contract's pattern wants (naive datetimes are taken as UTC)."""
    if now is None:
        moment = time.time()
        whole = int(moment)
        micro = min(999_999, int((moment - whole) * 1_000_000))
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"
    utc = sys.modules["datetime"].UTC  # a datetime was given: its module is loaded
    moment_dt = now if now.tzinfo is not None else now.replace(tzinfo=utc)
    return moment_dt.astimezone(utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uuid4() -> str:
    """A random (version 4) UUID string, as str(uuid.uuid4()) gives."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _username() -> str:
    # getpass.getuser()'s order, without importing getpass (and termios) into the shell.
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if user := os.environ.get(name):
            return user
    return _account_name(os.getuid() if hasattr(os, "getuid") else -1)


@functools.lru_cache(maxsize=4)
def _account_name(uid: int) -> str:
    """The passwd name of `uid` (read once: /etc/passwd each start would cost a shell a file read)."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, OSError, KeyError):  # no passwd entry (containers), or not POSIX
        return str(uid) if uid >= 0 else "unknown"


def _hostname() -> str:
    # What socket.gethostname() answers (uname's nodename), without importing socket (~2 ms).
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _platform() -> str:
    # os.uname is a syscall; platform.platform() would read the interpreter binary.
    if hasattr(os, "uname"):
        u = os.uname()
        return f"{u.sysname}-{u.release}-{u.machine}"
    return sys.platform


def _real_cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under the shell
        return None


def build_start_event(
    *,
    component_name: str,
    shell_type: str,
    metadata: Mapping[str, Any] | None,
    limits: Limits,
    report_cwd: str | None = None,
    now: _dt.datetime | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """The `track_session_start` arguments for this process (no token).

    `report_cwd` replaces `environment.cwd` (a remote server needs a path it has);
    the shell's real cwd is then kept in `metadata["shell_cwd"]`. A real cwd the
    server could never accept (too long, control characters, gone) is reported as
    the home directory, likewise keeping the real one in metadata.
    """
    home = os.path.expanduser("~")
    safe_home = sanitize_text(home, _MAX_PATH_CHARS)
    real = _real_cwd()
    extra: dict[str, Any] = {}
    if report_cwd is not None:
        cwd = sanitize_text(report_cwd, _MAX_PATH_CHARS)
        extra["shell_cwd"] = real
    elif real is not None and sanitize_text(real, _MAX_PATH_CHARS) == real:
        cwd = real
    else:
        cwd = safe_home
        extra["shell_cwd"] = real
    process_id = pid if pid is not None else os.getpid()
    if not 1 <= process_id <= _MAX_PID:
        process_id = os.getpid()
    version = sys.version_info
    name_chars = min(limits.max_string_chars, MAX_NAME_CHARS)  # a shell type or host name
    return {
        "event_version": EVENT_VERSION,
        "event_id": _uuid4(),
        "event_type": "session_start",
        "component_name": sanitize_component_name(component_name, limits.max_component_chars),
        "shell_type": sanitize_text(str(shell_type), name_chars) or "unknown",
        "timestamp": _timestamp(now),
        "pid": process_id,
        "user": {"username": sanitize_text(_username(), _MAX_USERNAME_CHARS), "home": safe_home},
        "hostname": sanitize_text(_hostname(), name_chars),
        "environment": {
            "python_version": f"{version.major}.{version.minor}.{version.micro}",
            "platform": _platform(),
            "cwd": cwd,
        },
        "metadata": sanitize_metadata(metadata, limits, first=extra),
    }


def _duration(value: float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return round(seconds, 3) if is_finite(seconds) and seconds >= 0 else None


def build_end_event(
    *,
    session_id: str,
    exit_reason: str,
    duration_seconds: float | None,
    metadata: Mapping[str, Any] | None,
    limits: Limits,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The `track_session_end` arguments (no token); exit reason and duration travel in metadata."""
    ours = {"exit_reason": str(exit_reason), "duration_seconds": _duration(duration_seconds)}
    return {
        "session_id": sanitize_text(str(session_id), limits.max_string_chars),
        "timestamp": _timestamp(now),
        "event_type": "session_end",
        "metadata": sanitize_metadata(metadata, limits, first=ours),
    }
