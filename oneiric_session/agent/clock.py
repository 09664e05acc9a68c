"""When the delivery agent may send again, whatever the wall clock does (hardening items 7 and 8).

The running agent times its own back-offs in monotonic time (`DestinationWorker.retry_at`);
the spool keeps each row's next attempt in wall-clock time for the next agent (after a kill
or a hand-over). Two rules join them:

- when this agent's back-off for a destination ends (monotonic), the rows it deferred are due
  now in the spool too, even if the wall clock stepped back meanwhile;
- a deadline read from the spool lies no further than that destination's back-off cap from
  now (`Spool.due_schedule`): a clock corrected backwards by a day costs at most one cap.

An agent with nothing due sleeps until the earliest deadline or a wake-up (it never starts a
worker that would find nothing to send, which is what made a new agent spin on rows not yet due).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from oneiric_session.spool import Spool
from oneiric_session.tracking.destination import Destination


class _State(Protocol):
    deferred: set[tuple[int, str]]
    retry_at: float
    task: Any


def backoff_cap(destination: Destination | None, floor: float) -> float:
    """The longest back-off a destination's tuning allows (never below `floor`, the agent's poll)."""
    tuning = (destination or Destination()).tuning
    return max(float(tuning.wait_max_seconds), float(tuning.wait_min_seconds), floor)


def due_waits(
    spool: Spool,
    states: Iterable[_State],
    destinations: Iterable[Destination],
    *,
    mono: float,
    wall: float,
    floor: float,
) -> dict[str, float]:
    """Seconds until each destination's earliest deliverable row is due (0: now); absent: none."""
    for state in states:
        if state.deferred and state.task is None and state.retry_at <= mono:
            spool.make_due(state.deferred, wall)
            state.deferred.clear()
    caps = {d.key: backoff_cap(d, floor) for d in destinations}
    default = backoff_cap(None, floor)
    due = spool.due_schedule(lambda key: caps.get(key, default), now=wall)
    return {key: max(0.0, at - wall) for key, at in due.items()}


def sleep_seconds(moments: Iterable[float | None], *, now: float, poll: float) -> float:
    """How long the serve loop may sleep (unless woken): until the earliest of `moments` still
    ahead (monotonic: back-offs ending, a row falling due, the idle exit), at most `poll`."""
    ahead = [moment - now for moment in moments if moment is not None]
    return max(min([poll, *ahead]), 0.001)
