"""The whole spool, as the agent and the operator commands use it: the shell's outbox, the
agent's delivery queue, and the operator's lists of rows waiting and dead.

A shell writes through `Outbox` alone, so it never loads the queue's modules (`due`,
`outcomes`, `queue`); `oneiric_session.spool.Spool` is this class, loaded on first use.
"""

from __future__ import annotations

from oneiric_session.spool.outbox import Outbox
from oneiric_session.spool.queue import DeliveryQueue
from oneiric_session.spool.records import STATE_DEAD, STATE_PENDING, SpooledEvent

__all__ = ["Spool"]


class Spool(DeliveryQueue, Outbox):
    """The spool at `path` (see the package's doc). Thread-safe; one instance per process.

    Every public method raises only SpoolError (after recovery from corruption was tried).
    """

    def list_pending(self, limit: int | None = None) -> list[SpooledEvent]:
        return self._select_events(f"e.state = '{STATE_PENDING}'", [], limit)

    def list_dead(self, limit: int | None = None) -> list[SpooledEvent]:
        return self._select_events(f"e.state = '{STATE_DEAD}'", [], limit)
