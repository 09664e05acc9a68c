"""The delivery agent's process: everything here runs in the agent, never in a shell.

By job: `core` (`DeliveryAgent`: tokens, one row, one worker per destination, the serve loop,
the foreground replay), `pipeline` (a window of calls in flight on one session, batched
acknowledgements), `clock` (when a destination may send again, whatever the wall clock does),
`watch` (the pids of open sessions, and the "abnormal" end of a shell that died). The shell's
side is elsewhere: it only appends to the spool and wakes the agent (`wakeup`).
"""

from __future__ import annotations

from oneiric_session.agent.core import (
    KILL_AFTER_ANSWER_ENV,
    DeliveryAgent,
    ReplayResult,
    run_agent,
    uncapped_spool,
)
from oneiric_session.agent.watch import ABNORMAL_EXIT_REASON, ALIVE_WRITE_SECONDS, FOREIGN_STALE_SECONDS

__all__ = [
    "ABNORMAL_EXIT_REASON",
    "ALIVE_WRITE_SECONDS",
    "FOREIGN_STALE_SECONDS",
    "KILL_AFTER_ANSWER_ENV",
    "DeliveryAgent",
    "ReplayResult",
    "run_agent",
    "uncapped_spool",
]
