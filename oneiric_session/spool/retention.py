"""The spool's caps (rows, bytes, age): the oldest sessions are dropped whole, and counted by reason.

Runs inside each append's transaction (a shell's record taken in applies that shell's caps).
Standard library only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from oneiric_session.spool.records import DROP_MAX_AGE, DROP_MAX_BYTES, DROP_MAX_ROWS, SESSION_DROPS_PREFIX

__all__ = ["count_drop", "enforce"]


def count_drop(conn: sqlite3.Connection, reason: str, count: int) -> None:
    if count:
        conn.execute(
            "INSERT INTO drops (reason, count) VALUES (?, ?)"
            " ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
            (reason, count),
        )


def enforce(
    conn: sqlite3.Connection,
    now: float,
    *,
    max_rows: int,
    max_bytes: int,
    max_age_seconds: float,
    sending: Collection[str] = frozenset(),
) -> dict[str, int]:
    """Apply the caps, whole sessions at a time, oldest first (see `_droppable`); rows dropped by reason.

    `sending`: the sessions whose start the agent has sent and whose answer it has not recorded
    yet. The server may have recorded them, so, like a session it knows, none of them is dropped.
    """
    dropped: dict[str, int] = {}
    cutoff = now - max_age_seconds
    # Only a session whose every event is older than the cutoff ages out, and never one still
    # open: after the clock jumped forward, a live shell's start looks old but its end will come.
    aged = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT handle FROM events WHERE created_at < ? ORDER BY id", (cutoff,)
        ).fetchall()
    ]
    aged = [h for h in aged if h not in sending and _droppable(conn, h, aged_before=cutoff)]
    dropped[DROP_MAX_AGE] = _drop_sessions(conn, aged, DROP_MAX_AGE)
    rows, size = conn.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
    if rows > max_rows:
        victims = _oldest_sessions(conn, sending, need_rows=rows - max_rows, need_bytes=0)
        dropped[DROP_MAX_ROWS] = _drop_sessions(conn, victims, DROP_MAX_ROWS)
        size = conn.execute("SELECT bytes FROM totals WHERE id = 1").fetchone()[0]
    if size > max_bytes:
        victims = _oldest_sessions(conn, sending, need_rows=0, need_bytes=size - max_bytes)
        dropped[DROP_MAX_BYTES] = _drop_sessions(conn, victims, DROP_MAX_BYTES)
    return {reason: n for reason, n in dropped.items() if n}


def _droppable(conn: sqlite3.Connection, handle: str, *, aged_before: float | None = None) -> bool:
    """Whether a cap may drop this session whole.

    Never the end of a session the server already knows (dropping it would leave that session
    open at the server forever): such an end stays until delivered, counted in the caps. With
    `aged_before` (the age cap): never a session still open, nor one with an event after it.
    """
    row = conn.execute(
        "SELECT server_session_id, end_spooled FROM sessions WHERE handle = ?", (handle,)
    ).fetchone()
    if row is not None and row[0] is not None:
        return False
    if aged_before is None:
        return True
    if row is not None and not row[1]:
        return False
    newest = conn.execute("SELECT MAX(created_at) FROM events WHERE handle = ?", (handle,)).fetchone()[0]
    return newest is not None and newest < aged_before


def _oldest_sessions(
    conn: sqlite3.Connection, sending: Collection[str], *, need_rows: int, need_bytes: int
) -> list[str]:
    """The oldest droppable sessions that together free at least this many rows and bytes."""
    handles: list[str] = []
    seen: set[str] = set()
    rows = size = 0
    cur = conn.execute(
        "SELECT e.handle, s.server_session_id FROM events e LEFT JOIN sessions s ON s.handle = e.handle"
        " ORDER BY e.id"
    )
    for handle, server_id in cur:
        if handle in seen or server_id is not None or handle in sending:
            continue
        seen.add(handle)
        count, total = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE handle = ?", (handle,)
        ).fetchone()
        handles.append(handle)
        rows += count
        size += total
        if rows >= need_rows and size >= need_bytes:
            break
    cur.close()
    return handles


def _drop_sessions(conn: sqlite3.Connection, handles: list[str], reason: str) -> int:
    """Delete these sessions whole (every row); counted by rows and by sessions. Returns the rows."""
    count = 0
    for handle in handles:
        count += conn.execute("DELETE FROM events WHERE handle = ?", (handle,)).rowcount
        # Forgotten: a later end of it is counted as no_start, never sent without its start.
        conn.execute("DELETE FROM sessions WHERE handle = ? AND server_session_id IS NULL", (handle,))
    count_drop(conn, reason, count)
    count_drop(conn, SESSION_DROPS_PREFIX + reason, len(handles))
    return count
