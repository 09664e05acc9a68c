"""Private files and directories, and refusing paths another user could have written (stdlib only).

Everything the project creates that holds session data, tokens or launch lines is
private to its owner (directories 0700, files 0600) whatever the umask: files are
created with `open_private` (O_NOFOLLOW: a symlink planted in their place is never
followed; a file that is not ours is refused), directories with `private_dir`.

A spool is a list of launch lines the agent executes, so a spool that another user
could have written is refused outright (`foreign_reason`): its directory must belong
to us (or root) and be writable by nobody else, and the spool and its companion files
(WAL, SHM, lock) must be ours and writable by nobody else. `not_private` is the milder
check `status` warns about: a path of ours that others can read. `refusal` words every refusal.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "PrivatePathError",
    "Unexamined",
    "foreign_reason",
    "not_private",
    "open_private",
    "ownership_problem",
    "private_dir",
    "spool_companions",
    "write_private",
]


class Unexamined(str):
    """A reason to refuse a path that could not be looked at (permission denied, a name too long):
    nothing says another user wrote it, only that it cannot be ruled out."""


class WrongKind(str):
    """A reason to refuse a path that is not what it must be (a directory where the spool should
    be, a file where its outbox should be): a mistake, nothing that says another user wrote it."""


def refusal(subject: str, reason: str) -> str:
    """The one message refusing `subject` ("spool /x", "outbox /x.outbox") for `reason`, as
    `foreign_reason` or `outbox_problem` gave it."""
    if isinstance(reason, WrongKind):
        return f"{subject} refused: {reason}; set spool.path to a file in a directory only you can write"
    if isinstance(reason, Unexamined):
        return (
            f"{subject} refused: {reason}, so who could have written it cannot be checked; let "
            "yourself read that directory, or set spool.path to a directory only you can write"
        )
    return (
        f"{subject} refused: {reason}, so another user could have written it (its launch lines "
        "would run as you); set spool.path to a directory only you can write"
    )


class PrivatePathError(PermissionError):
    """A path the project must own (or create) is a symlink, not a regular file, or another user's."""


def _mode(st: os.stat_result) -> str:
    return oct(stat.S_IMODE(st.st_mode))


def open_private(path: str | os.PathLike[str], flags: int, *, mode: int = 0o600) -> int:
    """`os.open` that never follows a symlink, refuses a file not ours, and leaves ours 0600. The fd."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PrivatePathError(f"{path} is not a regular file")
        if st.st_uid != os.getuid():
            raise PrivatePathError(f"{path} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o077:
            os.fchmod(fd, mode)  # created under a lax umask, or left so by an older version
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` and its missing parents created; the last one (ours) made 0700 whatever the umask."""
    directory = Path(path)
    try:  # the common case first, one call: only the last one is missing, or none is
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return directory
    except FileNotFoundError:
        pass  # missing parents too
    else:
        os.chmod(directory, 0o700)
        return directory
    missing = []
    parent = directory
    while not parent.is_dir() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            continue
        each.chmod(0o700)
    return directory


def _others_can_write(st: os.stat_result) -> bool:
    """True when a user other than the owner may write: world-writable, or a shared group's."""
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    if st.st_gid != os.getgid():
        return True
    try:
        import grp  # only for a group-writable path: a user private group (umask 002) is fine

        return bool(grp.getgrgid(st.st_gid).gr_mem)
    except (ImportError, KeyError):
        return True


def spool_companions(real: str) -> list[str]:
    """The files SQLite and the agent keep next to a spool (by its real path)."""
    return [real, f"{real}-wal", f"{real}-shm", f"{real}.lock"]


def _dir_reason(directory: str) -> str | None:
    path = directory
    while True:
        try:
            st = os.stat(path)
            break
        except NotADirectoryError:
            return None  # a file in the way: the caller's own error says so
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent  # created by us, 0700: what matters is who can write the nearest existing one
        except OSError as exc:
            return Unexamined(f"directory {path} cannot be examined: {exc.strerror or exc}")
    if not stat.S_ISDIR(st.st_mode):
        return None  # a file in the way: the caller's own error says so
    if st.st_uid not in (os.getuid(), 0):
        return f"directory {path} belongs to another user (uid {st.st_uid})"
    if _others_can_write(st):
        return f"directory {path} is writable by other users (mode {_mode(st)})"
    return None


def foreign_reason(path: str | os.PathLike[str], companions: Iterable[str] | None = None) -> str | None:
    """Why `path` (a spool) may hold what another user wrote; None when only we could have written it."""
    given = os.path.abspath(path)
    real = os.path.realpath(given)
    for directory in dict.fromkeys([os.path.dirname(given), os.path.dirname(real)]):
        reason = _dir_reason(directory)
        if reason is not None:
            return reason
    for name in spool_companions(real) if companions is None else companions:
        try:
            st = os.lstat(name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # absent (or a file in the way of its directory: the caller's error says so)
        except OSError as exc:
            return Unexamined(f"{name} cannot be examined: {exc.strerror or exc}")
        problem = ownership_problem(name, st)
        if problem is not None:
            return problem
    return None


def ownership_problem(
    name: str | os.PathLike[str], st: os.stat_result, *, directory: bool = False
) -> str | None:
    """Why `name` (its `lstat`) may hold what another user wrote: not a regular file (or, with
    `directory`, not a directory), another user's, or writable by others; None when it is ours."""
    if directory and not stat.S_ISDIR(st.st_mode):
        return WrongKind(f"{name} is not a directory")
    if not directory and not stat.S_ISREG(st.st_mode):
        return WrongKind(f"{name} is not a regular file")
    if st.st_uid != os.getuid():
        return f"{name} belongs to another user (uid {st.st_uid})"
    if _others_can_write(st):
        return f"{name} is writable by other users (mode {_mode(st)})"
    return None


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at `path` with `text` whole (a private file renamed into place): a reader
    sees the old or the new, never half; never written through a symlink."""
    target = os.fspath(path)
    temporary = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a crashed writer's, of the same pid
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def not_private(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """One warning per existing path that other users can read or enter (0700/0600 expected)."""
    warnings = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_mode & 0o077:
            kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
            expected = "0o700" if kind == "directory" else "0o600"
            warnings.append(f"{kind} {path} is not private (mode {_mode(st)}, expected {expected})")
    return warnings
