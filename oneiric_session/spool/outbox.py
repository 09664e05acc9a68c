"""The durable outbox a shell appends to: its two writes, the caps they apply, and the totals.

Standard library only: every shell imports this (and never the agent's queue: `full.Spool`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from oneiric_session.spool.connection import SpoolConnection
from oneiric_session.spool.records import (
    DEAD_START_REFUSED,
    DROP_NO_START,
    SESSION_DROPS_PREFIX,
    STATE_DEAD,
    STATE_PENDING,
    SpoolStats,
    bury,
    clip,
    encode,
    save_destination,
)
from oneiric_session.spool.retention import count_drop, enforce
from oneiric_session.tracking.destination import Destination

__all__ = ["Outbox"]


class Outbox(SpoolConnection):
    """What a shell writes with: the spool at `path` (see the package's doc). Thread-safe; one
    instance per process.

    Every public method raises only SpoolError (after recovery from corruption was tried).
    """

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
        """Spool a session start durably. False if this event_id or handle was already spooled.

        `pid` is the shell's, on `host` in PID namespace `pid_ns` (procinfo.identify()).
        """
        payload = encode(event)
        event_id = str(event.get("event_id") or f"start:{handle}")

        def write(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            save_destination(conn, destination)
            cur = conn.execute(
                "INSERT OR IGNORE INTO sessions (handle, destination_key, pid, pid_start_time, boot_id,"
                " started_at, last_seen_alive, host, pid_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (handle, destination.key, pid, pid_start_time, boot_id, now, now, host, pid_ns),
            )
            if cur.rowcount == 0:
                return False
            if not self._insert_event(conn, event_id, "start", handle, destination.key, payload, now):
                # This start is spooled already under another handle: no second session for it.
                conn.execute("DELETE FROM sessions WHERE handle = ?", (handle,))
                return False
            self._enforce(conn, now)
            return True

        return self._write(write)

    def append_end(self, handle: str, destination: Destination | None, event: Mapping[str, Any]) -> bool:
        """Spool a session end durably; it goes where its start went (`destination` is a fallback).

        False if the end was already spooled, or its start is unknown here (dropped, never
        spooled): that loss is counted as "no_start".
        """
        payload = encode(event)
        # One end per session: a second end (the shell's and the agent's "abnormal") is ignored.
        event_id = f"end:{handle}"

        def write(conn: sqlite3.Connection) -> bool:
            now = self._clock()
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
            written = self._insert_event(conn, event_id, "end", handle, key, payload, now)
            refused = conn.execute(
                "SELECT dead_reason FROM events"
                f" WHERE handle = ? AND kind = 'start' AND state = '{STATE_DEAD}'",
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
            self._enforce(conn, now)
            return written

        return self._write(write)

    def enforce_limits(self) -> dict[str, int]:
        """Apply the caps now (appends do it too); returns the rows dropped by reason."""
        return self._write(lambda conn: self._enforce(conn, self._clock()))

    def _enforce(self, conn: sqlite3.Connection, now: float) -> dict[str, int]:
        return enforce(
            conn, now, max_rows=self.max_rows, max_bytes=self.max_bytes, max_age_seconds=self.max_age_seconds
        )

    def stats(self) -> SpoolStats:
        def read(conn: sqlite3.Connection) -> SpoolStats:
            now = self._clock()
            depth, oldest = conn.execute(
                f"SELECT COUNT(*), MIN(created_at) FROM events WHERE state = '{STATE_PENDING}'"
            ).fetchone()
            dead = conn.execute(f"SELECT COUNT(*) FROM events WHERE state = '{STATE_DEAD}'").fetchone()[0]
            rows, size = conn.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone()
            opened = conn.execute("SELECT COUNT(*) FROM sessions WHERE end_spooled = 0").fetchone()[0]
            counted = dict(conn.execute("SELECT reason, count FROM drops ORDER BY reason").fetchall())
            drops = {k: v for k, v in counted.items() if not k.startswith(SESSION_DROPS_PREFIX)}
            whole = {
                k.removeprefix(SESSION_DROPS_PREFIX): v
                for k, v in counted.items()
                if k.startswith(SESSION_DROPS_PREFIX)
            }
            aside = conn.execute("SELECT value FROM meta WHERE key = 'moved_aside'").fetchone()
            return SpoolStats(
                depth=depth,
                oldest_pending_age_seconds=None if oldest is None else max(0.0, now - oldest),
                dead=dead,
                rows=rows,
                bytes=size,
                open_sessions=opened,
                drops=drops,
                moved_aside=None if aside is None else aside[0],
                dropped_sessions=whole,
            )

        return self._read(read)

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        event_id: str,
        kind: str,
        handle: str,
        key: str,
        payload: str,
        now: float,
    ) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (event_id, kind, handle, destination_key, payload, size,"
            " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, kind, handle, key, payload, len(payload.encode()), now, now),
        )
        return cur.rowcount > 0
