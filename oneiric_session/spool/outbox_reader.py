"""Reading the shells' outbox back: its records as the agent takes them in and as `status` and
`spool list` show them (never a shell: a shell only writes, `spool/outbox.py`).

A record is read only if it is a regular file of ours that nobody else can write, not bigger
than a record can be, of this format, and its name and content agree; a file without its final
newline is one still being written (`Unfinished`). Standard library only.
"""

import functools
import json
import os
import stat
import time
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from oneiric_session.common.paths import nothing_there
from oneiric_session.common.privacy import ownership_problem
from oneiric_session.spool.outbox import FORMAT, MAX_RECORD_BYTES, outbox_dir, outbox_problem, same_file_at
from oneiric_session.tracking.destination import Destination

__all__ = [
    "KINDS",
    "STALE_UNFINISHED_SECONDS",
    "UNREADABLE",
    "OutboxRecord",
    "Unfinished",
    "load_record",
    "open_sessions",
    "read_outbox",
    "record_names",
    "remove_if_abandoned",
    "unread_records",
]

# A record without its final newline this old was left by a shell that died writing it, before
# its start() or end() returned (a write takes about a millisecond): nothing was promised for it.
STALE_UNFINISHED_SECONDS = 60.0
KINDS = ("start", "end")
_SUFFIXES = tuple(f".{kind}" for kind in KINDS)  # a record's name: <handle>.<kind>
# A start record's shell identity (`outbox.shell_identity`), each field of its type or None.
_SHELL_FIELDS = {"pid": int, "pid_start_time": int, "boot_id": str, "host": str, "pid_ns": str}
# What reading a record that is not one of ours, or not a record, raises.
UNREADABLE = (OSError, ValueError)


class Unfinished(Exception):
    """A record still being written (no final newline yet); `args[0]`: seconds since its last write."""


class OutboxRecord(NamedTuple):
    """One record a shell wrote to the outbox (`spool/outbox.py`), as read back."""

    name: str
    kind: str
    handle: str
    event_id: str
    created_at: float
    destination: Destination | None
    payload: str
    caps: tuple[int, int, float]
    shell: dict[str, Any]


def read_outbox(spool_path: str | os.PathLike[str], *, taken: Collection[str] = ()) -> list[OutboxRecord]:
    """The readable records in the outbox of `spool_path` not in `taken`, oldest first; reads only."""
    directory = outbox_dir(spool_path)
    if outbox_unreadable(directory) is not None:
        return []
    records, _ = _scan(directory, taken)
    records.sort(key=lambda r: (r.created_at, KINDS.index(r.kind)))
    return records


def _scan(directory: str, taken: Collection[str]) -> tuple[list[OutboxRecord], list[str]]:
    """The records in the outbox `directory` that read, not in `taken`, and why each other one is
    never read ("NAME: REASON"); a record still being written, or gone since the listing (taken in
    by the agent), is neither."""
    records, unread = [], []
    for name in record_names(directory) or ():
        if name in taken:
            continue
        try:
            records.append(load_record(directory, name))
        except Unfinished:
            continue  # still being written (or abandoned: the agent removes it)
        except OSError as exc:
            if not nothing_there(exc):
                unread.append(f"{name}: {exc.strerror or type(exc).__name__}")
        except ValueError as exc:
            unread.append(f"{name}: {exc}")
    return records, unread


def outbox_unreadable(directory: str) -> str | None:
    """Why the records in the outbox `directory` are not read (another user could have written
    them, or it cannot be listed); None when they are, or when there is no outbox."""
    try:
        os.lstat(directory)
    except OSError as exc:
        if nothing_there(exc):
            return None
    problem = outbox_problem(directory)
    if problem is None:
        try:
            os.listdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problem = f"{directory} cannot be read: {exc.strerror or exc}"
    return problem


def unread_records(spool_path: str | os.PathLike[str]) -> str | None:
    """What `status`, `spool list` and `spool replay` say of the records in this spool's outbox that
    are never read (not ours, unreadable, or no record of this version): they are never delivered,
    and nothing else would say they are there. None when there are none (or the outbox is refused
    as a whole: `outbox_unreadable` says that)."""
    directory = outbox_dir(spool_path)
    if outbox_unreadable(directory) is not None:
        return None
    _, unread = _scan(directory, ())
    if not unread:
        return None
    return (
        f"{len(unread)} record(s) in the outbox {directory} are never read, so never delivered "
        f"(first: {unread[0]}): another user's, one you cannot read, or no record of this version "
        "(copied or restored there); nothing here can deliver them: remove them"
    )


def open_sessions(spooled: Iterable[str], records: Iterable[OutboxRecord]) -> int:
    """How many sessions are started and not ended: those the spool holds open (`spooled`, their
    handles) and those whose start waits in the outbox (`records`), less those whose end waits there."""
    waiting = list(records)
    ended = {r.handle for r in waiting if r.kind == "end"}
    return len(({*spooled} | {r.handle for r in waiting if r.kind == "start"}) - ended)


def record_names(directory: str) -> list[str] | None:
    """The names of the records in `directory`, oldest name first (None if it does not exist)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        if nothing_there(exc):
            return None
        raise
    return sorted(name for name in names if name.endswith(_SUFFIXES) and not name.startswith("."))


def load_record(directory: str, name: str) -> OutboxRecord:
    """One record, read only if it is ours and private; ValueError if it is not a record."""
    fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        problem = ownership_problem(name, st)
        if problem is not None:
            raise ValueError(problem)
        if st.st_size > MAX_RECORD_BYTES:
            raise ValueError(f"{st.st_size} bytes, more than a record holds")
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    if not data.endswith(b"\n"):
        raise Unfinished(time.time() - st.st_mtime)
    try:
        return _parse(name, data)
    except ValueError:
        raise
    except Exception as exc:  # too deep (RecursionError), too large a number, ...: not one of ours
        raise ValueError(f"not an outbox record ({type(exc).__name__})") from None


def _parse(name: str, data: bytes) -> OutboxRecord:
    """A record's content, every field of the type and size `outbox` writes; ValueError if not."""
    record = json.loads(data)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError("not an outbox record of this version")
    handle, kind, event_id = record.get("handle"), record.get("kind"), record.get("event_id")
    if not (isinstance(handle, str) and isinstance(kind, str) and isinstance(event_id, str)):
        raise ValueError("its handle, kind or event id is not text")
    if kind not in KINDS or name != f"{handle}.{kind}":
        raise ValueError("its name and its content disagree")
    destination = record.get("destination")
    if kind == "start" and destination is None:
        raise ValueError("a start without a destination")
    if destination is not None and not isinstance(destination, str):
        raise ValueError("its destination is not a destination")
    payload = record.get("payload")
    if not isinstance(payload, str) or not isinstance(event := json.loads(payload), dict):
        raise ValueError("its event is not an event")
    try:  # (a lone surrogate, `\\ud800`, or a name of a byte that is no UTF-8: SQLite takes neither)
        json.dumps([name, record, event], ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("it holds text that is not UTF-8") from None
    shell = record.get("shell") or {}
    if not isinstance(shell, dict) or not all(_shell_field(k, shell.get(k)) for k in _SHELL_FIELDS):
        raise ValueError("its shell's identity is not one")
    created_at, caps = record.get("created_at"), record.get("caps")
    if not (_figure(created_at) and isinstance(caps, list) and len(caps) == 3 and all(map(_figure, caps))):
        raise ValueError("its time or its caps are not figures")
    max_rows, max_bytes, max_age = caps
    if max_rows < LEAST_CAPS[0] or max_bytes < LEAST_CAPS[1] or max_age <= LEAST_CAPS[2]:
        raise ValueError("its caps are below what the settings allow")
    return OutboxRecord(
        name=name,
        kind=kind,
        handle=handle,
        event_id=event_id,
        created_at=float(record["created_at"]),
        destination=None if destination is None else _destination(destination),
        payload=payload,
        caps=(int(max_rows), int(max_bytes), float(max_age)),
        shell={k: shell.get(k) for k in _SHELL_FIELDS},
    )


# The least caps a shell's settings allow (`spool.max_rows` >= 1, `spool.max_bytes` >= 65536,
# `spool.max_age_days` > 0; config/models.SpoolSettings): a record below them is no shell's, and
# taken in it would drop every other shell's waiting sessions.
LEAST_CAPS = (1, 65536, 0.0)


def _figure(value: object) -> bool:
    """A number a record holds (a time, a cap): finite, not negative, not a bool, not huge."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**62


def _shell_field(name: str, value: object) -> bool:
    kind = _SHELL_FIELDS[name]
    if value is None:
        return True
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return isinstance(value, kind)


@functools.lru_cache(maxsize=64)
def _destination(text: str) -> Destination:
    """A record's destination (the shells of one configuration write the same text: parsed once)."""
    return Destination.from_json(text)


def remove_if_abandoned(path: str) -> bool:
    """Delete the unfinished record at `path` if nobody writes it any more; whether it was deleted.

    Its shell holds a lock on it while it writes (`outbox`), so a lock taken here means that shell
    is gone, or has not locked it yet (stopped between its create and its lock). The file is
    deleted while this lock is held, and only if it is still unfinished and still the file at
    `path`: a shell that locks it after that finds it deleted and writes its record anew.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.lockf(fd, os.F_TLOCK, 0)
        held = os.fstat(fd)
        if not same_file_at(held, path) or not stat.S_ISREG(held.st_mode):
            return False
        if time.time() - held.st_mtime < STALE_UNFINISHED_SECONDS:
            return False  # not the file found stale (that one went, and a shell made this one anew)
        data = os.pread(fd, MAX_RECORD_BYTES + 1, 0)
        if data.endswith(b"\n"):
            return False  # finished after all (its shell wrote it just before this look)
        os.unlink(path)
    except OSError:
        return False  # locked: its shell is still writing it (stopped, perhaps)
    finally:
        os.close(fd)  # and the lock with it
    return True
