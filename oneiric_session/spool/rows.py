"""How a start or an end becomes rows: its session and its event, at most one end per session,
and an end that follows its refused start into the dead letters. Run inside the caller's write
transaction: by `Intake`'s appends and by the outbox's records as they are taken in.

Standard library only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from oneiric_session.spool.records import (
    DEAD_START_REFUSED,
    DROP_NO_START,
    STATE_DEAD,
    bury,
    clip,
    save_destination,
)
from oneiric_session.spool.retention import count_drop
from oneiric_session.tracking.destination import Destination

__all__ = ["insert_end", "insert_start"]


def insert_start(
    conn: sqlite3.Connection,
    handle: str,
    event_id: str,
    destination: Destination,
    payload: str,
    shell: Mapping[str, Any],
    now: float,
) -> bool:
    """A new session and its start; False when the handle or the start's event id is spooled already."""
    save_destination(conn, destination)
    cur = conn.execute(
        "INSERT OR IGNORE INTO sessions (handle, destination_key, pid, pid_start_time, boot_id,"
        " started_at, last_seen_alive, host, pid_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            handle,
            destination.key,
            shell.get("pid"),
            shell.get("pid_start_time"),
            shell.get("boot_id"),
            now,
            now,
            shell.get("host"),
            shell.get("pid_ns"),
        ),
    )
    if cur.rowcount == 0:
        return False
    if not _insert_event(conn, event_id, "start", handle, destination.key, payload, now):
        # This start is spooled already under another handle: no second session for it.
        conn.execute("DELETE FROM sessions WHERE handle = ?", (handle,))
        return False
    return True


def insert_end(
    conn: sqlite3.Connection, handle: str, destination: Destination | None, payload: str, now: float
) -> bool:
    """The end of a spooled session; False (nothing written) for a second end or an unknown session.

    One end per session: a second end (the shell's and the agent's "abnormal") is ignored."""
    row = conn.execute(
        "SELECT destination_key, end_spooled FROM sessions WHERE handle = ?", (handle,)
    ).fetchone()
    if row is None:
        count_drop(conn, DROP_NO_START, 1)
        return False
    key, end_spooled = row
    if end_spooled:
        return False
    if destination is not None and destination.key == key:
        save_destination(conn, destination)
    conn.execute("UPDATE sessions SET end_spooled = 1 WHERE handle = ?", (handle,))
    written = _insert_event(conn, f"end:{handle}", "end", handle, key, payload, now)
    refused = conn.execute(
        f"SELECT dead_reason FROM events WHERE handle = ? AND kind = 'start' AND state = '{STATE_DEAD}'",
        (handle,),
    ).fetchone()
    if refused is not None:
        bury(
            conn,
            "kind = 'end' AND handle = ?",
            (handle,),
            DEAD_START_REFUSED,
            clip(f"start refused: {refused[0]}"),
        )
    return written


def _insert_event(
    conn: sqlite3.Connection, event_id: str, kind: str, handle: str, key: str, payload: str, now: float
) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO events (event_id, kind, handle, destination_key, payload, size,"
        " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (event_id, kind, handle, key, payload, len(payload.encode()), now, now),
    )
    return cur.rowcount > 0
