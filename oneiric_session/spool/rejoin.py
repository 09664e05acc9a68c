"""A spool whose WAL (or WAL index) was deleted under its users, and how they join again (item 10).

A connection keeps the `-wal` and `-shm` files it opened: after a careless `rm spool.sqlite3-wal`
it writes into a deleted file that nobody else reads, while a new connection finds an index
describing a WAL that is gone (every read fails with SQLITE_IOERR_SHORT_READ). With both
deleted, the old and the new connections each see a different spool. Closing an old
connection the usual way is worse: being the last one it knows of, SQLite checkpoints the
deleted WAL into the database file and deletes the new WAL by name.

So every user of the spool (the agent, the command line) compares, before each use, the files it
holds with the ones on disk (device and inode). When they differ it joins again:

1. it reads everything it still sees through its old connection (a snapshot of "its" spool);
2. it closes that connection without a checkpoint: an open-file-description read lock on the
   database's SHARED range makes SQLite's close-time EXCLUSIVE lock fail, so nothing is
   written nor deleted (Linux; elsewhere the old connection is kept open, never used);
3. if the WAL index on disk is still the one it held (only the WAL was deleted), it removes
   that index, so the next connection rebuilds one from the WAL actually on disk (every other
   holder of the old index then notices it is gone and joins again too);
4. it opens the spool again and merges its snapshot in: rows by event_id, sessions by handle,
   keeping what is already there (the server's session ids, ends spooled). A later joiner
   from the same old files merges only the rows added after the first join (the rows the
   first one merged may be delivered by then), so nothing is sent twice on its account;
   rows acknowledged only in the lost files are sent again (the bundled server is
   idempotent on event_id).

`join_again` runs these steps for `SpoolConnection` (spool/connection.py), in whichever process
noticed. It is said once per join in the log, and in `status` (meta key `spool.rejoined`).
Standard library only, loaded on that rare path only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oneiric_session.common.sqlite_files import directory_lock
from oneiric_session.spool.descriptors import adopt, release
from oneiric_session.spool.recovery import FileId, SideIds, file_key, side_ids, still_in_place
from oneiric_session.spool.transaction import immediate

logger = logging.getLogger("oneiric_session.spool")

META_REJOINED = "spool.rejoined"
_META_WORLD_PREFIX = "spool.rejoined-from:"

# SQLite's lock bytes in the database file (os_unix.c): SHARED is a read lock in this range.
_PENDING_BYTE = 0x40000000
_SHARED_FIRST = _PENDING_BYTE + 2
_SHARED_SIZE = 510

# Kept referenced where they cannot be closed safely (no OFD locks): never used again.
_ABANDONED: list[sqlite3.Connection] = []

_SESSION_COLUMNS = (
    "handle, destination_key, server_session_id, pid, pid_start_time, boot_id, started_at,"
    " last_seen_alive, end_spooled, host, pid_ns"
)
_EVENT_COLUMNS = (
    "event_id, kind, handle, destination_key, payload, size, attempts, last_error, created_at,"
    " next_attempt_at, state, dead_category, dead_reason"
)


def join_again(
    old: sqlite3.Connection | None,
    held: SideIds,
    path: Path,
    connect: Callable[[], sqlite3.Connection],
    clock: Callable[[], float],
) -> sqlite3.Connection:
    """Steps 1 to 4: leave `old` (it held the files `held`), `connect` to the spool on disk, merge."""
    snap = snapshot(old) if old is not None else None
    if old is not None:
        abandon(old, path)
    with directory_lock(path):
        drop_stale_index(path, held)
        conn = connect()
        message = (
            f"the spool's WAL files were deleted or replaced under process {os.getpid()};"
            " it joined the spool on disk again and merged what it still saw"
        )
        added = merge(conn, snap, held, clock(), message)
    logger.warning("spool %s: %s (%d row(s) restored)", path, message, added)
    return conn


def world_name(held: SideIds) -> str | None:
    """A name for the files a connection held (what a later joiner from them looks up)."""
    wal = held[0]
    return None if wal is None else f"{wal[0]}:{wal[1]}"


def snapshot(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]] | None:
    """Everything an old connection still sees; None if it sees nothing usable."""
    try:
        conn.execute("BEGIN")
        try:
            return {
                "destinations": conn.execute("SELECT key, json FROM destinations").fetchall(),
                "sessions": conn.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions").fetchall(),
                "events": conn.execute(f"SELECT id, {_EVENT_COLUMNS} FROM events ORDER BY id").fetchall(),
                "meta": conn.execute("SELECT key, value FROM meta").fetchall(),
            }
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
    except sqlite3.Error:
        return None


def close(conn: sqlite3.Connection, path: Path, file_id: FileId | None, sides: SideIds | None) -> None:
    """Close `conn`, which opened the file `file_id` and the WAL files `sides` at `path`: abandoned
    if its WAL files were replaced under it while the database is still in place (a usual close
    would checkpoint into and delete the files on disk now); a database moved away SQLite's own
    close leaves alone."""
    if sides is not None and side_ids(path) != sides and still_in_place(path, file_id):
        abandon(conn, path)
        return
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def abandon(conn: sqlite3.Connection, path: os.PathLike[str] | str) -> None:
    """Close a connection whose WAL files are gone, without letting SQLite checkpoint or delete."""
    try:
        import fcntl

        ofd_setlk = fcntl.F_OFD_SETLK  # type: ignore[attr-defined, unused-ignore]  # Linux only: typeshed may lack it
    except (ImportError, AttributeError):
        _ABANDONED.append(conn)  # not Linux: never closed, never used
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        _ABANDONED.append(conn)
        return
    # Closed by spool/descriptors with the file's last holder: closing it here would drop the
    # POSIX locks of any other connection of ours to the file (the lock taken on it goes then too).
    file_id = adopt(fd)
    try:
        lock = struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, _SHARED_FIRST, _SHARED_SIZE, 0)
        try:
            fcntl.fcntl(fd, ofd_setlk, lock)
        except OSError:
            _ABANDONED.append(conn)
            return
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        unlock = struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, _SHARED_FIRST, _SHARED_SIZE, 0)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, ofd_setlk, unlock)
    finally:
        release(file_id)


def drop_stale_index(path: os.PathLike[str] | str, held: SideIds) -> bool:
    """Only the WAL went: remove the index that describes it, if it is still the one we held."""
    shm = f"{os.fspath(path)}-shm"
    if held[1] is None or file_key(shm) != held[1]:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shm)
    return True


def merge(
    conn: sqlite3.Connection,
    snap: dict[str, list[tuple[Any, ...]]] | None,
    held: SideIds,
    now: float,
    message: str,
) -> int:
    """Merge an old connection's snapshot into the spool now on disk; the rows added."""
    world = world_name(held)
    with immediate(conn):
        added = 0
        if snap is not None:
            watermark = -1
            if world is not None:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = ?", (_META_WORLD_PREFIX + world,)
                ).fetchone()
                if row is not None:
                    with contextlib.suppress(ValueError, TypeError):
                        watermark = int(json.loads(row[0])["last_id"])
            events = [r for r in snap["events"] if r[0] > watermark]
            handles = {r[3] for r in events}
            conn.executemany(
                "INSERT OR IGNORE INTO destinations (key, json) VALUES (?, ?)", snap["destinations"]
            )
            for session in snap["sessions"]:
                if watermark >= 0 and session[0] not in handles:
                    continue  # merged by the first joiner (and maybe finished since)
                conn.execute(
                    f"INSERT OR IGNORE INTO sessions ({_SESSION_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    session,
                )
                conn.execute(
                    "UPDATE sessions SET server_session_id = COALESCE(server_session_id, ?),"
                    " end_spooled = MAX(end_spooled, ?), last_seen_alive = MAX(last_seen_alive, ?)"
                    " WHERE handle = ?",
                    (session[2], session[8], session[7], session[0]),
                )
            for event in events:
                added += conn.execute(
                    f"INSERT OR IGNORE INTO events ({_EVENT_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    event[1:],
                ).rowcount
            conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", snap["meta"])
            if world is not None and watermark < 0:
                last = max((r[0] for r in snap["events"]), default=0)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (_META_WORLD_PREFIX + world, json.dumps({"last_id": last, "at": now})),
                )
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (META_REJOINED, json.dumps({"at": now, "message": message})),
        )
    return added
