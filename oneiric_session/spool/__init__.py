"""The durable spool: every start and end is on disk before the shell moves on, until its server answered.

A shell writes each event as one small file in the spool's outbox directory, flushed to disk
before `start()` or `end()` returns (`outbox`: no SQLite in the shell's process). The one
delivery agent takes those records into one SQLite file in WAL mode (`intake`), and delivers
from there. Writers take the lock with BEGIN IMMEDIATE and hold it for one short transaction.
The agent's connection commits with synchronous=NORMAL (`durable=False`): in WAL mode a commit
then survives the process's crash but not a power loss, and what such a loss undoes is only
the agent's bookkeeping (an acknowledgement, a failure count, a dead letter), so the row is
sent again and the server's idempotence on event_id absorbs it; taking records in is the
exception, flushed to disk before their files are deleted.

Rows are delivered oldest first. A start's acknowledgement deletes its row and records the
server's session id in the same transaction; an end is deliverable only once its session has
that id, and follows its start into dead letters when the start is refused. The spool is
bounded by rows, bytes and age: the oldest rows are dropped (a start together with its end)
and counted by reason. A corrupt or foreign file is moved aside and a fresh spool started
(never by a read-only Spool, `read_only=True`, as `status` and `spool list` use: it never
creates, converts or moves a file, and says what the file is instead). A spool that another
user could have written (its directory or files theirs, or writable by them) is refused:
its rows are launch lines the agent would execute (`privacy.foreign_reason`).
The token is never written: a "token" key anywhere in an event is removed.

The package, by job: `schema` (the tables), `transaction` (the one write transaction),
`opening` (one SQLite connection: private file, pragmas, schema check), `recovery` (files
moved, replaced or corrupt: moved aside), `connection` (reads and writes that recover, the
meta key-value table), `records` (the rows as readers see them), `retention` (the caps),
`due` (what the agent sends next, and when), `outcomes` (what becomes of a row: acknowledged,
failed, dead, requeued), `queue` (the agent's side: both of those, the sessions it watches,
its claim), `outbox` (`Outbox`: the shell's writes, one file per event), `intake` (`Intake`:
events entering the database, the outbox taken in, the totals), `rows` (a start or an end
as rows, one end per session), `full` (`Spool`: the intake,
the queue and the operator's lists, for the agent and the CLI), `rejoin` (after the WAL files
were deleted under a running process).

Standard library only. Names are loaded on first use: a shell imports `spool.outbox` alone,
and never `sqlite3`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oneiric_session.common.lazy import lazy_exports

if TYPE_CHECKING:
    from oneiric_session.spool.connection import (
        DEFAULT_BUSY_TIMEOUT_SECONDS,
        DEFAULT_MAX_AGE_SECONDS,
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_ROWS,
    )
    from oneiric_session.spool.full import Spool
    from oneiric_session.spool.records import (
        DAMAGED,
        DEAD_AUTH,
        DEAD_DAMAGED,
        DEAD_REJECTED,
        DEAD_START_REFUSED,
        DROP_MAX_AGE,
        DROP_MAX_BYTES,
        DROP_MAX_ROWS,
        DROP_NO_START,
        STATE_DEAD,
        OpenSession,
        SpooledEvent,
        SpoolStats,
    )
    from oneiric_session.spool.schema import SCHEMA_VERSION

_RECORDS = "oneiric_session.spool.records"
_CONNECTION = "oneiric_session.spool.connection"
_EXPORTS = {
    "DAMAGED": _RECORDS,
    "DEAD_AUTH": _RECORDS,
    "DEAD_DAMAGED": _RECORDS,
    "DEAD_REJECTED": _RECORDS,
    "DEAD_START_REFUSED": _RECORDS,
    "DEFAULT_BUSY_TIMEOUT_SECONDS": _CONNECTION,
    "DEFAULT_MAX_AGE_SECONDS": _CONNECTION,
    "DEFAULT_MAX_BYTES": _CONNECTION,
    "DEFAULT_MAX_ROWS": _CONNECTION,
    "DROP_MAX_AGE": _RECORDS,
    "DROP_MAX_BYTES": _RECORDS,
    "DROP_MAX_ROWS": _RECORDS,
    "DROP_NO_START": _RECORDS,
    "SCHEMA_VERSION": "oneiric_session.spool.schema",
    "STATE_DEAD": _RECORDS,
    "OpenSession": _RECORDS,
    "Spool": "oneiric_session.spool.full",
    "SpoolStats": _RECORDS,
    "SpooledEvent": _RECORDS,
}

__all__ = [
    "DAMAGED",
    "DEAD_AUTH",
    "DEAD_DAMAGED",
    "DEAD_REJECTED",
    "DEAD_START_REFUSED",
    "DEFAULT_BUSY_TIMEOUT_SECONDS",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "DROP_MAX_AGE",
    "DROP_MAX_BYTES",
    "DROP_MAX_ROWS",
    "DROP_NO_START",
    "SCHEMA_VERSION",
    "STATE_DEAD",
    "OpenSession",
    "Spool",
    "SpoolStats",
    "SpooledEvent",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
