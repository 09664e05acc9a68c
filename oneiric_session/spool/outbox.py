"""The shell's outbox: each start and each end a small file of its own, durable before the call returns.

A shell never opens the spool's database. Importing `sqlite3` and one SQLite transaction cost
a fresh shell about 3.5 ms before its prompt; creating one file, writing it, `fdatasync` and
an `fsync` of its directory cost about 0.6 ms (`benchmarks/spool_append.py`). So `start()` and
`end()` each write one record into `<spool's real path>.outbox/`, a private directory beside the
spool, and the delivery agent takes the records into the spool (`spool/intake.py`) when it is
woken, then deletes them.

One record, one file, written once: `<handle>.start` or `<handle>.end` is created exclusively
(O_EXCL, O_NOFOLLOW, 0600), written in one `write`, flushed to disk, and its directory flushed
too, so a record a shell was told is written survives a power loss. A record ends with a
newline: a reader that finds none is looking at a file still being written (or one a shell
died writing, before its call returned: nothing was promised for it). A second end of a
session finds the first in place and is refused, as the spool refuses it. (A temporary file
renamed into place would cost a shell a third of a millisecond more per event, measured.)

The records are launch lines the agent executes, so the outbox is refused like the spool when
another user could have written it (`common.privacy`): the spool's directory must be ours and
writable by nobody else, and the outbox directory ours and private. The agent checks every
record's owner and mode again before it takes it in.

Standard library only, and nothing more than a shell needs: this is all a shell loads of the spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from oneiric_session.common.privacy import Unexamined, foreign_reason, ownership_problem, private_dir, refusal
from oneiric_session.errors import SpoolError, UnsafeSpoolError
from oneiric_session.tracking.destination import Destination

__all__ = [
    "FORMAT",
    "MAX_RECORD_BYTES",
    "Outbox",
    "StartAppender",
    "encode",
    "outbox_dir",
    "outbox_problem",
    "same_file_at",
    "sync_directory",
]

OUTBOX_SUFFIX = ".outbox"
# The record's shape; a record of another format is left for the code that wrote it.
FORMAT = 1
# A record is one event (its metadata capped by `limits`) and a launch line: far below this.
MAX_RECORD_BYTES = 1024 * 1024
# (max_rows, max_bytes, max_age_seconds): the caps of the shell that wrote a record, applied
# when the agent takes it in, as the shell's own append applied them when it wrote the spool.
Caps = tuple[int, int, float]

_SECRET_KEYS = frozenset({"token"})
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def outbox_dir(spool_path: str | os.PathLike[str]) -> str:
    """The outbox of the spool at `spool_path`: beside its real path, so every name of one spool
    file (a symlink, a relative path) has one outbox, as it has one lock and one deliverer."""
    return os.path.realpath(spool_path) + OUTBOX_SUFFIX


def outbox_problem(directory: str) -> str | None:
    """Why the outbox `directory` (if it exists) may hold what another user wrote; None when it is ours."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Unexamined(f"{directory} cannot be examined: {exc.strerror or exc}")
    return ownership_problem(directory, st, directory=True)


def shell_identity(
    pid: int | None, pid_start_time: int | None, boot_id: str | None, host: str | None, pid_ns: str | None
) -> dict[str, Any]:
    """Who a session's shell is (`procinfo`), as a start record and the spool's sessions table keep it."""
    return {"pid": pid, "pid_start_time": pid_start_time, "boot_id": boot_id, "host": host, "pid_ns": pid_ns}


def _strip_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): _strip_secrets(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.lower() in _SECRET_KEYS)
        }
    if isinstance(value, list | tuple):
        return [_strip_secrets(v) for v in value]
    return value


def encode(event: Mapping[str, Any]) -> str:
    """An event as the text that is stored and sent: JSON, any "token" key removed."""
    try:
        return json.dumps(_strip_secrets(event), separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError) as exc:
        raise SpoolError(f"event cannot be spooled: {type(exc).__name__}") from None


class StartAppender:
    """One signature for spooling a session start, in the two places a start is written: the
    shell's `Outbox` (a file) and the agent's `Intake` (the spool's database: tests, benchmarks)."""

    def append_start(
        self,
        handle: str,
        destination: Destination,
        event: Mapping[str, Any],
        *,
        pid: int | None,
        pid_start_time: int | None,
        boot_id: str | None,
        host: str | None = None,
        pid_ns: str | None = None,
    ) -> bool:
        """Write a session start durably. False if this handle's start (or its event_id) is written already.

        `pid` is the shell's, on `host` in PID namespace `pid_ns` (procinfo.identify()).
        """
        return self._start(
            handle, destination, event, shell_identity(pid, pid_start_time, boot_id, host, pid_ns)
        )

    def _start(
        self, handle: str, destination: Destination, event: Mapping[str, Any], shell: dict[str, Any]
    ) -> bool:
        raise NotImplementedError


class Outbox(StartAppender):
    """Where one shell process writes its sessions' starts and ends for the spool at `spool_path`.

    Thread-safe (each record is its own file). Every method raises only SpoolError.
    """

    def __init__(
        self,
        spool_path: str | os.PathLike[str],
        *,
        caps: Caps,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool_path = os.fspath(spool_path)
        self.caps = caps
        self._clock = clock
        # The outbox directory once checked (and made): a shell checks it once, as it once checked
        # the spool once when it opened it; checked again if a write finds it gone.
        self._checked: str | None = None

    @property
    def directory(self) -> str:
        return outbox_dir(self.spool_path)

    def _start(
        self, handle: str, destination: Destination, event: Mapping[str, Any], shell: dict[str, Any]
    ) -> bool:
        return self._write(handle, "start", destination, event, shell)

    def append_end(self, handle: str, destination: Destination | None, event: Mapping[str, Any]) -> bool:
        """Write a session end durably; it goes where its start went (`destination` is a fallback).

        False if this session's end is written already (and not taken in yet).
        """
        return self._write(handle, "end", destination, event, None)

    def writable(self) -> bool:
        """Whether records can be written here now (the directory is ours, or can be made)."""
        try:
            self._checked = self._check()
        except SpoolError:
            return False
        return True

    # -- internals --------------------------------------------------------------

    def _check(self) -> str:
        """The outbox directory, made private if missing; UnsafeSpoolError if another user could write it."""
        reason = foreign_reason(self.spool_path)
        directory = self.directory
        if reason is None:
            try:
                private_dir(directory)
            except OSError as exc:
                raise SpoolError(f"outbox {directory} cannot be created: {exc.strerror or exc}") from exc
            reason = outbox_problem(directory)
        if reason is not None:
            raise UnsafeSpoolError(refusal(f"spool {self.spool_path}", reason))
        return directory

    def _write(
        self,
        handle: str,
        kind: str,
        destination: Destination | None,
        event: Mapping[str, Any],
        shell: dict[str, Any] | None,
    ) -> bool:
        record = {
            "format": FORMAT,
            "kind": kind,
            "handle": handle,
            "event_id": str(event.get("event_id") or f"start:{handle}")
            if kind == "start"
            else f"end:{handle}",
            "created_at": self._clock(),
            "destination": None if destination is None else destination.to_json(),
            "payload": encode(event),
            "caps": list(self.caps),
            "shell": shell,
        }
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode(
            "utf-8", "replace"
        )
        if len(data) > MAX_RECORD_BYTES:
            raise SpoolError(f"event cannot be spooled: {len(data)} bytes (at most {MAX_RECORD_BYTES})")
        try:
            try:
                return self._create(handle, kind, data)
            except FileNotFoundError:  # the directory went away since it was checked: check it again
                self._checked = None
                return self._create(handle, kind, data)
        except SpoolError:
            raise
        except OSError as exc:
            raise SpoolError(f"outbox {self.directory}: {exc.strerror or exc}") from exc

    def _create(self, handle: str, kind: str, data: bytes) -> bool:
        """Write the record's file, flushed with its directory; False if it exists already."""
        if self._checked is None:
            self._checked = self._check()
        directory = self._checked
        path = os.path.join(directory, f"{handle}.{kind}")
        for _ in range(2):
            try:
                fd = os.open(path, _CREATE, 0o600)
            except FileExistsError:
                return False  # written already (a second end of one session)
            try:
                # Held while writing: the agent deletes an unfinished record only once nobody holds it.
                os.lockf(fd, os.F_LOCK, 0)
                # Deleted already, as abandoned: this shell stood still between its create and its
                # lock for longer than the agent waits for an unfinished record (stopped, or the
                # clock stepped). Written anew. (Once written, only a take-in deletes it.) Looked
                # for at the path, not by link count: NFS keeps a file deleted while open, linked
                # as a hidden `.nfs…` one.
                deleted = not same_file_at(os.fstat(fd), path)
                if not deleted:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fdatasync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # no half record left behind: a later try may write it whole
                raise
            finally:
                os.close(fd)
            if not deleted:
                sync_directory(directory)  # the file's name is as durable as its content
                return True
        raise SpoolError(f"outbox record {path} was deleted as abandoned while it was being written")


def same_file_at(held: os.stat_result, path: str) -> bool:
    """Whether the file of `held` (an `fstat`) is the one at `path` now (not deleted nor replaced)."""
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
