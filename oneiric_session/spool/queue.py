"""The agent's side of the spool: due rows, acknowledgements, failures, dead letters, open sessions.

Standard library only: every shell imports the spool (a shell itself only appends: spool/outbox.py).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from oneiric_session.destination import Destination
from oneiric_session.spool.connection import SpoolConnection
from oneiric_session.spool.records import (
    DEAD_REJECTED,
    DEAD_START_REFUSED,
    DELETE_ROW,
    EVENT_COLUMNS,
    OpenSession,
    SpooledEvent,
    clip,
    event_from_row,
)

__all__ = ["DeliveryQueue"]

logger = logging.getLogger("oneiric_session.spool")

# The meta key of the deliverer's claim (its pid, start time, boot id): see claim_agent.
_META_OWNER = "agent.owner"


class DeliveryQueue(SpoolConnection):
    """What the delivery agent reads and writes; `Spool` adds the shell's appends and the totals."""

    def next_batch(
        self, *, destination_key: str | None = None, limit: int = 100, now: float | None = None
    ) -> list[SpooledEvent]:
        """Deliverable pending rows, oldest first: due now, and ends only once their start is acknowledged."""
        when = self._clock() if now is None else now
        where = (
            "e.state = 'pending' AND e.next_attempt_at <= ?"
            " AND (e.kind = 'start' OR s.server_session_id IS NOT NULL)"
        )
        params: list[Any] = [when]
        if destination_key is not None:
            where += " AND e.destination_key = ?"
            params.append(destination_key)
        return self._select_events(where, params, limit)

    def due_schedule(
        self, bound: Callable[[str], float] | None = None, *, now: float | None = None
    ) -> dict[str, float]:
        """Per destination with deliverable pending rows: when its earliest one is due (clock time).

        A deadline further than `bound(key)` seconds from now (written before the wall clock
        stepped back) is brought to now + bound(key), in the spool too: no back-off written by
        any agent outlasts the back-off cap, whatever the clock did since.
        """
        when = self._clock() if now is None else now

        def read(conn: sqlite3.Connection) -> dict[str, float]:
            rows = conn.execute(
                "SELECT e.destination_key, MIN(e.next_attempt_at) FROM events e"
                " LEFT JOIN sessions s ON s.handle = e.handle WHERE e.state = 'pending'"
                " AND (e.kind = 'start' OR s.server_session_id IS NOT NULL) GROUP BY e.destination_key"
            ).fetchall()
            return {key: at for key, at in rows}

        due = self._read(read)
        if bound is None:
            return due
        limits = {key: when + max(0.0, bound(key)) for key in due}
        late = {key: limit for key, limit in limits.items() if due[key] > limit}
        if late:

            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(
                    "UPDATE events SET next_attempt_at = ?"
                    " WHERE destination_key = ? AND state = 'pending' AND next_attempt_at > ?",
                    ((limit, key, limit) for key, limit in late.items()),
                )

            self._write(write)
            due.update(late)
        return due

    def make_due(self, rows: Iterable[tuple[int, str]], now: float | None = None) -> int:
        """These rows (row id, event id) are due at `now` at the latest: their back-off ended."""
        when = self._clock() if now is None else now
        keys = list(rows)
        if not keys:
            return 0
        return self._write(
            lambda conn: sum(
                conn.execute(
                    "UPDATE events SET next_attempt_at = MIN(next_attempt_at, ?)"
                    " WHERE id = ? AND event_id = ? AND state = 'pending'",
                    (when, row_id, event_id),
                ).rowcount
                for row_id, event_id in keys
            )
        )

    def pending_destinations(self) -> list[Destination]:
        """The destinations that have pending rows, in the order of their oldest row."""

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT destination_key FROM events WHERE state = 'pending'"
                " GROUP BY destination_key ORDER BY MIN(id)"
            ).fetchall()
            return [r[0] for r in rows]

        keys = self._read(read)
        found = (self.destination(k) for k in keys)
        return [d for d in found if d is not None]

    def destination(self, key: str) -> Destination | None:
        """The destination stored under `key` (None if unknown or unreadable)."""
        row = self._read(
            lambda conn: conn.execute("SELECT json FROM destinations WHERE key = ?", (key,)).fetchone()
        )
        dest = None
        if row is not None:
            try:
                dest = Destination.from_json(row[0])
            except (ValueError, TypeError, AttributeError):
                logger.warning("spool %s: destination %s cannot be read", self.path, key)
        return dest

    def ack_start(self, row: SpooledEvent, server_session_id: str) -> bool:
        """The server accepted the start: delete the row and map its handle, in one transaction."""

        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute(
                "UPDATE sessions SET server_session_id = ? WHERE handle = ?", (server_session_id, row.handle)
            )
            return deleted > 0

        return self._write(write)

    def ack_end(self, row: SpooledEvent) -> bool:
        """The server accepted the end: the row and its finished session are removed."""

        def write(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute("DELETE FROM sessions WHERE handle = ?", (row.handle,))
            return deleted > 0

        return self._write(write)

    def ack_batch(self, starts: Iterable[tuple[SpooledEvent, str]], ends: Iterable[SpooledEvent]) -> int:
        """`ack_start` and `ack_end` for many answers in one transaction; returns the rows deleted."""
        started, ended = list(starts), list(ends)

        def write(conn: sqlite3.Connection) -> int:
            deleted = 0
            for row, server_session_id in started:
                deleted += conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
                conn.execute(
                    "UPDATE sessions SET server_session_id = ? WHERE handle = ?",
                    (server_session_id, row.handle),
                )
            for row in ended:
                deleted += conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
                conn.execute("DELETE FROM sessions WHERE handle = ?", (row.handle,))
            return deleted

        return self._write(write) if started or ended else 0

    def record_failure(self, row: SpooledEvent, error: str, next_attempt_at: float) -> bool:
        """A transient failure: count the attempt and wait until `next_attempt_at` (clock time)."""
        return self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE events SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                    " WHERE id = ? AND event_id = ? AND state = 'pending'",
                    (clip(error), next_attempt_at, row.row_id, row.event_id),
                ).rowcount
                > 0
            )
        )

    def dead_letter(self, row: SpooledEvent, reason: str, *, category: str = DEAD_REJECTED) -> bool:
        """A permanent refusal: keep the row as a dead letter. A refused start takes its end along."""

        def write(conn: sqlite3.Connection) -> bool:
            this_row = (row.row_id, row.event_id)
            conn.execute("UPDATE events SET attempts = attempts + 1 WHERE id = ? AND event_id = ?", this_row)
            moved = self._bury(conn, "id = ? AND event_id = ?", this_row, category, clip(reason))
            if moved and row.kind == "start":
                self._bury(
                    conn,
                    "kind = 'end' AND handle = ? AND state = 'pending'",
                    (row.handle,),
                    DEAD_START_REFUSED,
                    clip(f"start refused: {reason}"),
                )
            return moved > 0

        return self._write(write)

    def requeue_dead(self, category: str | None = None) -> int:
        """Dead letters of `category` (all if None) become pending, due now; returns how many.

        Ends that followed a refused start come back with their start (never before it).
        """

        def write(conn: sqlite3.Connection) -> int:
            now = self._clock()
            revive = (
                "UPDATE events SET state = 'pending', dead_category = NULL, dead_reason = NULL,"
                " attempts = 0, next_attempt_at = ? WHERE state = 'dead' AND "
            )
            count = 0
            if category != DEAD_START_REFUSED:
                cond, params = "dead_category IS NOT ?", [DEAD_START_REFUSED]
                if category is not None:
                    cond, params = "dead_category = ?", [category]
                count += conn.execute(revive + cond, (now, *params)).rowcount
            count += conn.execute(
                revive + "dead_category = ? AND handle NOT IN"
                " (SELECT handle FROM events WHERE kind = 'start' AND state = 'dead')",
                (now, DEAD_START_REFUSED),
            ).rowcount
            return count

        return self._write(write)

    def retarget(self, old_key: str | None, destination: Destination) -> int:
        """Send rows spooled for `old_key` (any destination if None) to `destination`; returns how many.

        Moves starts, and ends whose start the old destination has not acknowledged (an
        acknowledged session can only be ended where it was started). Pending rows become due now.
        """

        def write(conn: sqlite3.Connection) -> int:
            now = self._clock()
            self._save_destination(conn, destination)
            cond, params = "destination_key != ?", [destination.key]
            if old_key is not None:
                cond, params = "destination_key = ? AND destination_key != ?", [old_key, destination.key]
            moved = conn.execute(
                "UPDATE events SET destination_key = ?,"
                " next_attempt_at = CASE WHEN state = 'pending' THEN ? ELSE next_attempt_at END"
                f" WHERE {cond} AND (kind = 'start' OR handle IN"
                " (SELECT handle FROM sessions WHERE server_session_id IS NULL))",
                (destination.key, now, *params),
            ).rowcount
            conn.execute(
                f"UPDATE sessions SET destination_key = ? WHERE {cond} AND server_session_id IS NULL",
                (destination.key, *params),
            )
            return moved

        return self._write(write)

    def open_sessions(self) -> list[OpenSession]:
        """Sessions whose end is not spooled yet (for watching their pids), oldest first."""
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT handle, destination_key, server_session_id, pid, pid_start_time, boot_id,"
                " started_at, last_seen_alive, host, pid_ns FROM sessions WHERE end_spooled = 0"
                " ORDER BY started_at"
            ).fetchall()
        )
        return [OpenSession(*r) for r in rows]

    def mark_alive(self, handles: str | Iterable[str], now: float | None = None) -> int:
        """Record that these sessions' processes were seen alive at `now` (clock time), in one
        transaction; returns how many sessions were found. Never moves a sighting backwards."""
        when = self._clock() if now is None else now
        names = [handles] if isinstance(handles, str) else list(handles)
        return self._write(
            lambda conn: sum(
                conn.execute(
                    "UPDATE sessions SET last_seen_alive = MAX(last_seen_alive, ?) WHERE handle = ?",
                    (when, handle),
                ).rowcount
                for handle in names
            )
        )

    def claim_agent(self, owner: str, alive: Callable[[str], bool]) -> bool:
        """Record `owner` as this spool's one deliverer, unless a live one (`alive(its claim)`) is there.

        The claim lives in the spool itself, so it is found whatever name the spool is opened by and
        survives the lock file being deleted (see `wakeup.AgentLock`).
        """

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_OWNER,)).fetchone()
            if row is not None and row[0] != owner and alive(row[0]):
                return False
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_META_OWNER, owner),
            )
            return True

        return self._write(write)

    def release_agent(self, owner: str) -> None:
        """Drop `owner`'s claim (only its own)."""
        self._write(
            lambda conn: conn.execute("DELETE FROM meta WHERE key = ? AND value = ?", (_META_OWNER, owner))
        )

    def _save_destination(self, conn: sqlite3.Connection, destination: Destination) -> None:
        text = destination.to_json()
        conn.execute(
            "INSERT INTO destinations (key, json) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET json = excluded.json WHERE json != excluded.json",
            (destination.key, text),
        )

    @staticmethod
    def _bury(
        conn: sqlite3.Connection, cond: str, params: tuple[Any, ...], category: str, reason: str
    ) -> int:
        return conn.execute(
            f"UPDATE events SET state = 'dead', dead_category = ?, dead_reason = ? WHERE {cond}",
            (category, reason, *params),
        ).rowcount

    def _select_events(self, where: str, params: list[Any], limit: int | None) -> list[SpooledEvent]:
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events e LEFT JOIN sessions s ON s.handle = e.handle"
            f" WHERE {where} ORDER BY e.id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, limit]
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        found: dict[str, Destination | None] = {}
        for r in rows:
            if r[4] not in found:
                found[r[4]] = self.destination(r[4])
        return [event_from_row(r, found[r[4]]) for r in rows]
