"""What is due for delivery: the deliverable rows oldest first, when each destination's next one
is due, and the destinations the rows go to.

Read by the delivery agent, and by the command line (`spool list` and `spool replay`); a shell
never reads them (it only writes its outbox: spool/outbox.py). Standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from oneiric_session.spool.connection import SpoolConnection
from oneiric_session.spool.records import EVENT_COLUMNS, STATE_PENDING, SpooledEvent, event_from_row
from oneiric_session.tracking.destination import Destination

__all__ = ["DueRows"]

logger = logging.getLogger("oneiric_session.spool")


class DueRows(SpoolConnection):
    """The pending rows as the agent picks them: what to send now, and when to look again."""

    def next_batch(
        self, *, destination_key: str | None = None, limit: int = 100, now: float | None = None
    ) -> list[SpooledEvent]:
        """Deliverable pending rows, oldest first: due now, and ends only once their start is acknowledged."""
        when = self._clock() if now is None else now
        where = (
            f"e.state = '{STATE_PENDING}' AND e.next_attempt_at <= ?"
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

        with self.reading() as conn:
            rows = conn.execute(
                "SELECT e.destination_key, MIN(e.next_attempt_at) FROM events e"
                f" LEFT JOIN sessions s ON s.handle = e.handle WHERE e.state = '{STATE_PENDING}'"
                " AND (e.kind = 'start' OR s.server_session_id IS NOT NULL) GROUP BY e.destination_key"
            ).fetchall()
        due: dict[str, float] = {key: at for key, at in rows}
        if bound is None:
            return due
        limits = {key: when + max(0.0, bound(key)) for key in due}
        late = {key: limit for key, limit in limits.items() if due[key] > limit}
        if late:
            with self.transaction() as conn:
                conn.executemany(
                    "UPDATE events SET next_attempt_at = ?"
                    f" WHERE destination_key = ? AND state = '{STATE_PENDING}' AND next_attempt_at > ?",
                    ((limit, key, limit) for key, limit in late.items()),
                )
            due.update(late)
        return due

    def make_due(self, rows: Iterable[tuple[int, str]], now: float | None = None) -> int:
        """These rows (row id, event id) are due at `now` at the latest: their back-off ended."""
        when = self._clock() if now is None else now
        keys = list(rows)
        if not keys:
            return 0
        with self.transaction() as conn:
            return sum(
                conn.execute(
                    "UPDATE events SET next_attempt_at = MIN(next_attempt_at, ?)"
                    f" WHERE id = ? AND event_id = ? AND state = '{STATE_PENDING}'",
                    (when, row_id, event_id),
                ).rowcount
                for row_id, event_id in keys
            )

    def pending_destinations(self) -> list[Destination]:
        """The destinations that have pending rows, in the order of their oldest row."""

        with self.reading() as conn:
            rows = conn.execute(
                f"SELECT destination_key FROM events WHERE state = '{STATE_PENDING}'"
                " GROUP BY destination_key ORDER BY MIN(id)"
            ).fetchall()
        found = (self.destination(r[0]) for r in rows)
        return [d for d in found if d is not None]

    def waiting(self, key: str) -> int:
        """How many rows wait to be sent to the destination `key` (pending, not dead)."""
        with self.reading() as conn:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM events WHERE destination_key = ? AND state = '{STATE_PENDING}'",
                (key,),
            ).fetchone()
        return int(count)

    def destination(self, key: str) -> Destination | None:
        """The destination stored under `key` (None if unknown or unreadable)."""
        with self.reading() as conn:
            row = conn.execute("SELECT json FROM destinations WHERE key = ?", (key,)).fetchone()
        dest = None
        if row is not None:
            try:
                dest = Destination.from_json(row[0])
            except (ValueError, TypeError, AttributeError):
                logger.warning("spool %s: destination %s cannot be read", self.path, key)
        return dest

    def _select_events(self, where: str, params: list[Any], limit: int | None) -> list[SpooledEvent]:
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events e LEFT JOIN sessions s ON s.handle = e.handle"
            f" WHERE {where} ORDER BY e.id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, limit]
        with self.reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        found: dict[str, Destination | None] = {}
        for r in rows:
            if r[4] not in found:
                found[r[4]] = self.destination(r[4])
        return [event_from_row(r, found[r[4]]) for r in rows]
