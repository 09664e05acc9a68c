"""What becomes of a row: the acknowledgement state machine of the spool.

A pending row is acknowledged (deleted; a start's server session id recorded), fails for now
(counted, due again later) or is refused for good (a dead letter, its end along with a refused
start). Dead letters come back with `requeue_dead`, rows go to another destination with
`retarget`. Written by the delivery agent, and by the command line's `spool replay`; a shell
never writes these (it only writes its outbox: spool/outbox.py). Standard library only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from oneiric_session.spool.connection import SpoolConnection
from oneiric_session.spool.records import (
    DEAD_REJECTED,
    DEAD_START_REFUSED,
    DELETE_ROW,
    STATE_DEAD,
    STATE_PENDING,
    SpooledEvent,
    bury,
    clip,
    save_destination,
)
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.url_rules import without_destination_secrets

__all__ = ["RowOutcomes"]


# `PRAGMA secure_delete` reads 0, 1 or 2, and is set by name: a number sets it on or off, never FAST.
_SECURE_DELETE_MODES = {0: "OFF", 1: "ON", 2: "FAST"}


class RowOutcomes(SpoolConnection):
    """Each row's outcome: acknowledged, failed for now, dead, requeued or sent elsewhere."""

    def ack_start(self, row: SpooledEvent, server_session_id: str) -> bool:
        """The server accepted the start: delete the row and map its handle, in one transaction."""

        with self.transaction() as conn:
            deleted = conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute(
                "UPDATE sessions SET server_session_id = ? WHERE handle = ?", (server_session_id, row.handle)
            )
            return deleted > 0

    def ack_end(self, row: SpooledEvent) -> bool:
        """The server accepted the end: the row and its finished session are removed."""

        with self.transaction() as conn:
            deleted = conn.execute(DELETE_ROW, (row.row_id, row.event_id)).rowcount
            conn.execute("DELETE FROM sessions WHERE handle = ?", (row.handle,))
            return deleted > 0

    def ack_batch(self, starts: Iterable[tuple[SpooledEvent, str]], ends: Iterable[SpooledEvent]) -> int:
        """`ack_start` and `ack_end` for many answers in one transaction; returns the rows deleted."""
        started, ended = list(starts), list(ends)
        if not started and not ended:
            return 0
        with self.transaction() as conn:
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

    def record_failure(self, row: SpooledEvent, error: str, next_attempt_at: float) -> bool:
        """A transient failure: count the attempt and wait until `next_attempt_at` (clock time)."""
        with self.transaction() as conn:
            counted = conn.execute(
                "UPDATE events SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
                f" WHERE id = ? AND event_id = ? AND state = '{STATE_PENDING}'",
                (clip(error), next_attempt_at, row.row_id, row.event_id),
            ).rowcount
        return counted > 0

    def dead_letter(self, row: SpooledEvent, reason: str, *, category: str = DEAD_REJECTED) -> bool:
        """A permanent refusal: keep the row as a dead letter. A refused start takes its end along."""

        with self.transaction() as conn:
            this_row = (row.row_id, row.event_id)
            conn.execute("UPDATE events SET attempts = attempts + 1 WHERE id = ? AND event_id = ?", this_row)
            moved = bury(conn, "id = ? AND event_id = ?", this_row, category, clip(reason))
            if moved and row.kind == "start":
                bury(
                    conn,
                    f"kind = 'end' AND handle = ? AND state = '{STATE_PENDING}'",
                    (row.handle,),
                    DEAD_START_REFUSED,
                    clip(f"start refused: {reason}"),
                )
            return moved > 0

    def requeue_dead(self, category: str | None = None) -> int:
        """Dead letters of `category` (all if None) become pending, due now; returns how many.

        Ends that followed a refused start come back with their start (never before it).
        """

        with self.transaction() as conn:
            now = self._clock()
            revive = (
                f"UPDATE events SET state = '{STATE_PENDING}', dead_category = NULL, dead_reason = NULL,"
                f" attempts = 0, next_attempt_at = ? WHERE state = '{STATE_DEAD}' AND "
            )
            count = 0
            if category != DEAD_START_REFUSED:
                cond, params = "dead_category IS NOT ?", [DEAD_START_REFUSED]
                if category is not None:
                    cond, params = "dead_category = ?", [category]
                count += conn.execute(revive + cond, (now, *params)).rowcount
            count += conn.execute(
                revive + "dead_category = ? AND handle NOT IN"
                f" (SELECT handle FROM events WHERE kind = 'start' AND state = '{STATE_DEAD}')",
                (now, DEAD_START_REFUSED),
            ).rowcount
            return count

    def retarget(self, old_key: str | None, destination: Destination) -> int:
        """Send rows spooled for `old_key` (any destination if None) to `destination`; returns how many.

        Moves starts, and ends whose start the old destination has not acknowledged (an
        acknowledged session can only be ended where it was started). Pending rows become due now.
        """

        with self.transaction() as conn:
            now = self._clock()
            save_destination(conn, destination)
            cond, params = "destination_key != ?", [destination.key]
            if old_key is not None:
                cond, params = "destination_key = ? AND destination_key != ?", [old_key, destination.key]
            moved = conn.execute(
                "UPDATE events SET destination_key = ?,"
                f" next_attempt_at = CASE WHEN state = '{STATE_PENDING}' THEN ? ELSE next_attempt_at END"
                f" WHERE {cond} AND (kind = 'start' OR handle IN"
                " (SELECT handle FROM sessions WHERE server_session_id IS NULL))",
                (destination.key, now, *params),
            ).rowcount
            conn.execute(
                f"UPDATE sessions SET destination_key = ? WHERE {cond} AND server_session_id IS NULL",
                (destination.key, *params),
            )
            return moved

    def rekey(self) -> int:
        """Move the rows of each destination stored under a key this version does not compute for it
        (an older version's: its secrets were part of the key then) to the key it computes, and
        store the destination as this version does (secrets as references); how many moved.

        The agent does this as it starts: otherwise those rows would belong to no destination it
        looks for, and wait for ever. The rows rewritten held secrets (a url's password): their old
        bytes are zeroed (`secure_delete`) and the WAL emptied into the file, so the secrets are not
        left readable in the spool's files. That checkpoint never waits: while a reader (`status`)
        holds an older snapshot it cannot be made, and SQLite's own checkpoints write over the old
        page later (at the latest when the last connection closes).
        """
        with self.transaction() as conn:
            secure = conn.execute("PRAGMA secure_delete").fetchone()[0]
            conn.execute("PRAGMA secure_delete = ON")
            try:
                moved = self._rekey_rows(conn)
            finally:
                conn.execute(f"PRAGMA secure_delete = {_SECURE_DELETE_MODES[secure]}")
        if moved:
            with self.reading() as conn:
                wait = conn.execute("PRAGMA busy_timeout").fetchone()[0]
                conn.execute("PRAGMA busy_timeout = 0")  # waiting would hold every writer back
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(wait)}")
        return moved

    @staticmethod
    def _rekey_rows(conn: sqlite3.Connection) -> int:
        """`rekey`'s moves, in the caller's transaction."""
        moved = 0
        for key, text in conn.execute("SELECT key, json FROM destinations").fetchall():
            try:
                destination = Destination.from_json(text)
            except ValueError:  # not one this version would write: its rows stay as they are
                continue
            if destination.key == key and destination.to_json() == text:
                continue
            # Its secrets were in clear: so were they in its rows' errors (an older version's
            # description of the server held a url's query), shown by `spool list`.
            _scrub_rows(conn, key, destination.secrets())
            if destination.key == key:
                save_destination(conn, destination)  # stored as this version stores it
            else:  # a destination a current shell stored under this key keeps its tuning
                conn.execute(
                    "INSERT INTO destinations (key, json) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (destination.key, destination.to_json()),
                )
                for table in ("events", "sessions"):
                    conn.execute(
                        f"UPDATE {table} SET destination_key = ? WHERE destination_key = ?",
                        (destination.key, key),
                    )
                conn.execute("DELETE FROM destinations WHERE key = ?", (key,))
            moved += 1
        return moved


def _scrub_rows(conn: sqlite3.Connection, key: str, secrets: dict[str, str]) -> None:
    """Each of `secrets` (`Destination.secrets()`) cut out of the errors and dead-letter reasons of
    destination `key`'s rows."""
    if not secrets:
        return
    rows = conn.execute(
        "SELECT id, last_error, dead_reason FROM events WHERE destination_key = ?", (key,)
    ).fetchall()
    for row_id, error, reason in rows:
        clean = (without_destination_secrets(error, secrets), without_destination_secrets(reason, secrets))
        if clean != (error, reason):
            conn.execute("UPDATE events SET last_error = ?, dead_reason = ? WHERE id = ?", (*clean, row_id))
