"""The whole spool, as the agent and the operator commands use it: events entering it (and the
shells' outbox taken in), the agent's delivery queue, and the operator's lists of rows waiting
and dead. A shell writes through `spool.outbox` alone and never loads any of this.
"""

from __future__ import annotations

import json
import os

from oneiric_session.spool.intake import Intake
from oneiric_session.spool.outbox_reader import OutboxRecord, read_outbox
from oneiric_session.spool.queue import DeliveryQueue
from oneiric_session.spool.records import STATE_DEAD, STATE_PENDING, SpooledEvent

__all__ = ["Spool", "outbox_pending"]


class Spool(DeliveryQueue, Intake):
    """The spool at `path` (see the package's doc). Thread-safe; one instance per process.

    Every public method raises only SpoolError (after recovery from corruption was tried).
    """

    def list_pending(self, limit: int | None = None) -> list[SpooledEvent]:
        """Rows waiting to be sent, oldest first: those in the database, then those the shells wrote
        that the agent has not taken in yet (their `row_id` is 0)."""
        rows = self._select_events(f"e.state = '{STATE_PENDING}'", [], limit)
        rows += [_waiting(record) for record in self.outbox_records()]
        return rows if limit is None else rows[:limit]

    def list_dead(self, limit: int | None = None) -> list[SpooledEvent]:
        return self._select_events(f"e.state = '{STATE_DEAD}'", [], limit)


def outbox_pending(path: str | os.PathLike[str]) -> list[SpooledEvent]:
    """What the shells wrote for a spool whose database no agent has made yet, as `list_pending`
    shows it (reading changes nothing)."""
    return [_waiting(record) for record in read_outbox(path)]


def _waiting(record: OutboxRecord) -> SpooledEvent:
    """An outbox record shown as the row it becomes once taken in."""
    return SpooledEvent(
        row_id=0,
        event_id=record.event_id,
        kind="start" if record.kind == "start" else "end",
        handle=record.handle,
        destination_key=record.destination.key if record.destination is not None else "",
        destination=record.destination,
        payload=json.loads(record.payload),
        attempts=0,
        last_error=None,
        created_at=record.created_at,
        next_attempt_at=record.created_at,
        state=STATE_PENDING,
        dead_category=None,
        dead_reason=None,
        server_session_id=None,
    )
