"""Pipelined delivery to one destination: up to a window of calls in flight on its one MCP session.

JSON-RPC lets a client send a request before the previous one is answered, and the SDK's
client session correlates answers by request id (mcp 2.3: one pending entry per id; over
Streamable HTTP each request is its own POST). So the agent keeps up to `window` rows of a
destination in flight at once, and commits their acknowledgements in batches
(`Spool.ack_batch`, one transaction for many answers) instead of one transaction per answer.

What stays as it was:
- an end is sent only after its start's answer is committed (the spool offers an end only
  once its session has the server's id), so it never precedes that answer;
- a row leaves the spool only in the transaction that records its answer: a kill -9 at any
  moment loses nothing, and re-sends what was in flight or answered but not yet committed
  (at most window + one batch of rows; the bundled server is idempotent on event_id);
- the first transient failure stops the destination: the calls still in flight are
  cancelled (their rows untouched, sent again after the back-off), so one outage counts
  one failure towards the back-off, as with one call in flight; refusals become dead
  letters one by one, as before.

The window: the `agent.window` setting when set; otherwise `DEFAULT_WINDOW` for a server
known to answer concurrent calls correctly and to be idempotent on event_id (the bundled
server, recognised by the name it gives in the MCP handshake), and 1 for any other server.
Session-Buddy 0.23.0 answers concurrent calls correctly (scripts/probe_concurrency.py) but
handles them one at a time (no gain) and is not idempotent (a larger window widens what a
crash re-sends as second sessions), so it gets 1. Until a connection is open the name is
unknown, so the first call of a connection goes alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from oneiric_session.spool import Spool, SpooledEvent

__all__ = [
    "ACK_BATCH_ROWS",
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "PIPELINE_SAFE_SERVERS",
    "Acknowledgements",
    "drain",
    "window_size",
]

# Calls in flight per destination by default, for servers in PIPELINE_SAFE_SERVERS. Measured
# (benchmarks/run.py): on stdio the bundled server is bound by its own fsync per call past ~4;
# over HTTP at +20 ms RTT throughput grows up to ~16, and 16 keeps a crash's re-sends small.
DEFAULT_WINDOW = 16
# The setting's upper bound: more would only queue inside the server.
MAX_WINDOW = 64
# Answers committed in one spool transaction at most; a batch is also committed whenever no
# call is in flight (so a lone event's acknowledgement is not delayed) and before fetching rows.
ACK_BATCH_ROWS = 64
# Servers that answer concurrent calls correctly and are idempotent on event_id (handshake name).
PIPELINE_SAFE_SERVERS = frozenset({"oneiric-session"})
# Rows fetched per query beyond those already in flight.
FETCH_ROWS = 50


def window_size(configured: int, server_name: str | None) -> int:
    """Calls allowed in flight: the setting when > 0, else by what the server is known to be."""
    if configured > 0:
        return min(configured, MAX_WINDOW)
    return DEFAULT_WINDOW if server_name in PIPELINE_SAFE_SERVERS else 1


class Acknowledgements:
    """Answers received and not yet committed to the spool."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._starts: list[tuple[SpooledEvent, str]] = []
        self._ends: list[SpooledEvent] = []

    def __len__(self) -> int:
        return len(self._starts) + len(self._ends)

    def start(self, row: SpooledEvent, server_session_id: str) -> None:
        self._starts.append((row, server_session_id))

    def end(self, row: SpooledEvent) -> None:
        self._ends.append(row)

    def rows(self) -> list[SpooledEvent]:
        return [row for row, _ in self._starts] + self._ends

    def commit(self) -> None:
        """One transaction for every answer held; raises SpoolError (the answers are then re-sent)."""
        if not self:
            return
        starts, ends = self._starts, self._ends
        self._starts, self._ends = [], []
        self._spool.ack_batch(starts, ends)


def _ident(row: SpooledEvent) -> tuple[int, str]:
    return row.row_id, row.event_id


async def drain(
    spool: Spool,
    key: str,
    *,
    due: float | None,
    stopping: Callable[[], bool],
    prepare: Callable[[SpooledEvent], Any | None],
    deliver: Callable[[SpooledEvent, Any, Acknowledgements], Coroutine[Any, Any, bool]],
    window: Callable[[Any, SpooledEvent], int],
    sending: set[str] | None = None,
) -> None:
    """Deliver `key`'s due rows oldest first, up to `window(state, row)` in flight, until none is
    left or a transient failure makes the destination back off.

    Once `stopping()` is true no new call is sent, and the calls in flight are waited for and
    their answers committed (a handover to `spool replay` must not leave a sent call unanswered,
    or the replay sends it again); the caller bounds that wait by cancelling this task.

    The sessions of the rows fetched are added to `sending`: from then on the server may record
    them, so the spool's caps must not drop them (`retention.enforce`); the caller clears it once
    this returns (every answer received is recorded by then).

    `prepare(row)` returns the destination's delivery state, or None when the row was dealt with
    (an unknown destination: dead letter); `deliver(row, state, acks)` sends one row, records a
    success in `acks`, and returns False on a transient failure (as `DestinationWorker.deliver`).
    """
    acks = Acknowledgements(spool)
    flight: dict[asyncio.Task[bool], SpooledEvent] = {}
    candidates: collections.deque[SpooledEvent] = collections.deque()
    exhausted = False  # the last fetch found nothing new: fetch again only after an answer
    backing_off = False
    try:
        while True:
            while not backing_off and not stopping():
                if not candidates and not exhausted:
                    acks.commit()  # so ends whose starts were just answered become deliverable
                    busy = {_ident(r) for r in flight.values()}
                    fresh = [
                        r
                        for r in spool.next_batch(destination_key=key, limit=FETCH_ROWS + len(busy), now=due)
                        if _ident(r) not in busy
                    ]
                    candidates.extend(fresh)
                    if sending is not None:
                        sending.update(r.handle for r in fresh)
                    exhausted = not fresh
                if not candidates:
                    break
                row = candidates[0]
                state = prepare(row)
                if state is None:
                    candidates.popleft()
                    continue
                if flight and len(flight) >= window(state, row):
                    break
                candidates.popleft()
                flight[asyncio.create_task(deliver(row, state, acks))] = row
            if not flight:
                return
            done, _ = await asyncio.wait(flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                flight.pop(task)
                if not task.result():  # a SpoolError or a bug raises here: the finally cleans up
                    backing_off = True
            if backing_off:
                await _cancel(flight)
                return
            exhausted = False
            if len(acks) >= ACK_BATCH_ROWS or not flight:
                acks.commit()
    finally:
        await _cancel(flight)
        acks.commit()


async def _cancel(flight: dict[asyncio.Task[bool], SpooledEvent]) -> None:
    """Cancel the calls still in flight; an answer that arrived meanwhile is kept (in acks)."""
    for task in flight:
        task.cancel()
    for task in list(flight):
        with contextlib.suppress(BaseException):
            await task
    flight.clear()
