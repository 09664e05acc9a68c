"""Where one spool's agent keeps its lock, spawn marker, log and socket (standard library only).

Run by both sides: a shell finds the socket to wake and the lock and marker to look at, the
agent binds the socket and takes the lock. The lock and marker sit next to the spool's real
path; the socket sits in a private per-user directory (mode 0700, like ssh-agent's and
gpg-agent's), named after a hash of that path: one agent per spool, and a short path whatever
the spool's path is. The directory being private is what keeps another user from receiving
the tokens a wake-up may carry, so a directory that is not ours and private is never used.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from oneiric_session.common.digest import sha256_hex

__all__ = [
    "agent_log_path",
    "lock_path",
    "published_socket",
    "socket_dir_problems",
    "socket_note",
    "socket_note_path",
    "socket_path",
    "spawn_marker_path",
]

# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107


def _real(spool_path: Path) -> Path:
    """The spool's real path: a symlinked name and the file it points to share one lock and one socket."""
    return Path(os.path.realpath(spool_path))


def lock_path(spool_path: Path) -> Path:
    """The lock file whose holder is the one agent delivering this spool (found by the real path)."""
    real = _real(spool_path)
    return real.with_name(real.name + ".lock")


def spawn_marker_path(spool_path: Path) -> Path:
    """Present while a shell's spawned agent has not yet reached for the lock (holds the agent's pid)."""
    real = _real(spool_path)
    return real.with_name(real.name + ".spawning")


def socket_note_path(spool_path: Path) -> Path:
    """Where the agent writes the socket it listens on: a shell started from another environment
    (another $XDG_RUNTIME_DIR or $TMPDIR: a login shell after a cron- or tmux-started one) computes
    another socket path, and finds the agent's here."""
    real = _real(spool_path)
    return real.with_name(real.name + ".socket")


def socket_note(socket: Path, spool_path: Path) -> str:
    """What the agent's note says: its socket, and the identity of the spool's lock file (the one
    file every path to this spool leads to, a bind mount's included; a copy's is another)."""
    info = os.stat(lock_path(spool_path))
    return f"{os.fsdecode(socket)}\n{info.st_dev}:{info.st_ino}"


def published_socket(spool_path: Path) -> Path | None:
    """The socket the agent's note names, or None unless the note is ours (a regular file nobody
    else can write), is this spool's (its lock file's identity), and names a socket in a private
    directory of ours: a wake-up carries tokens."""
    try:
        fd = os.open(socket_note_path(spool_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
        text = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    named, _, identity = os.fsdecode(text).partition("\n")
    path = Path(named)
    if not path.is_absolute() or len(os.fsencode(named)) > _MAX_SOCKET_PATH_BYTES:
        return None
    try:
        lock = os.stat(lock_path(spool_path))
    except OSError:
        return None
    if identity != f"{lock.st_dev}:{lock.st_ino}":
        return None  # another spool's agent (a note copied with the spool's files)
    try:
        return path if _ours_and_private(path.parent.lstat()) else None
    except OSError:
        return None


def agent_log_path(spool_path: Path) -> Path:
    """Where a spawned agent logs (its stdio goes to /dev/null)."""
    return spool_path.with_name(spool_path.name + ".agent.log")


def _private_dir(path: Path) -> Path | None:
    """`path`, created 0700 if missing; None unless it is a real directory owned by us and private."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = path.lstat()
    except OSError:
        return None
    return path if _ours_and_private(info) else None


def _ours_and_private(info: os.stat_result) -> bool:
    """A real directory (not a link to one) of ours that nobody else may enter."""
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _runtime_dirs() -> list[Path]:
    """Candidate private directories for the socket, best first: $XDG_RUNTIME_DIR, then the
    temporary directory as tempfile.gettempdir() looks for it (importing tempfile costs a shell ~1 ms).
    A relative value is ignored, as the XDG spec says: it names another directory in the agent (which
    runs in /) than in the shell, or none at all in a deleted working directory."""
    dirs = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        dirs.append(Path(runtime) / "oneiric-session")
    temporary = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for base in dict.fromkeys([*(os.path.normpath(t) for t in temporary if t and os.path.isabs(t)), "/tmp"]):
        dirs.append(Path(base) / f"oneiric-session-{os.getuid()}")
    return dirs


def socket_dir_problems() -> list[str]:
    """Why candidate socket directories that exist are skipped (another user's, a symlink, not private)."""
    problems = []
    for candidate in _runtime_dirs():
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            why = "not a directory"
        elif info.st_uid != os.getuid():
            why = f"it belongs to another user (uid {info.st_uid})"
        elif info.st_mode & 0o077:
            why = f"not private (mode {oct(info.st_mode & 0o777)})"
        else:
            continue
        problems.append(f"wake-up socket directory {candidate} refused: {why}")
    return problems


@functools.lru_cache(maxsize=8)
def _socket_name(spool_path: str) -> str:
    """A hash of the spool's real path (worked out once per path: a shell wakes at each event)."""
    return sha256_hex(os.fsencode(os.path.realpath(spool_path)))[:20] + ".sock"  # (any bytes)


def socket_path(spool_path: Path) -> Path | None:
    """The agent's socket for this spool, in a private directory; None when no usable one exists."""
    name = _socket_name(os.fspath(spool_path))
    for candidate in _runtime_dirs():
        if len(os.fsencode(candidate / name)) > _MAX_SOCKET_PATH_BYTES:
            continue
        directory = _private_dir(candidate)
        if directory is not None:
            return directory / name
    return None
