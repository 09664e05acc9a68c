"""The delivery agent's process: everything here runs in the agent, never in a shell.

By job: `core` (`DeliveryAgent`: scheduling the destination workers, the serve loop and its
idle hand-over, the foreground replay), `worker` (one destination: its client, back-off, one
row sent, and `classify(error)`), `pipeline` (a window of calls in flight on one session,
batched acknowledgements), `credentials` (tokens and secrets in memory, per destination),
`doorbell` (the wake-up listener on the event loop), `clock` (when a destination may send
again, whatever the wall clock does), `watch` (the pids of open sessions, and the "abnormal"
end of a shell that died). The shell's
side is elsewhere: it only appends to the spool and wakes the agent (`wakeup`).
"""

from __future__ import annotations

from oneiric_session.agent.core import DeliveryAgent, ReplayResult, run_agent, uncapped_spool
from oneiric_session.agent.watch import ABNORMAL_EXIT_REASON, ALIVE_WRITE_SECONDS, FOREIGN_STALE_SECONDS

__all__ = [
    "ABNORMAL_EXIT_REASON",
    "ALIVE_WRITE_SECONDS",
    "FOREIGN_STALE_SECONDS",
    "DeliveryAgent",
    "ReplayResult",
    "run_agent",
    "uncapped_spool",
]
