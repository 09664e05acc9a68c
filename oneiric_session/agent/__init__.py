"""The delivery agent's process: everything here runs in the agent, never in a shell.

By job: `core` (`DeliveryAgent`: scheduling the destination workers, the serve loop and its
idle hand-over, the foreground replay), `worker` (one destination: its client, back-off, one
row sent, and `classify(error)`), `resilience` (the one retry policy and the circuit breaker),
`pipeline` (a window of calls in flight on one session, batched acknowledgements),
`credentials` (tokens and secrets in memory, per destination), `doorbell` (the wake-up
listener on the event loop), `clock` (when a destination may send again, whatever the wall
clock does), `watch` (the pids of open sessions, and the "abnormal" end of a shell that died),
`status` (what the agent publishes about each destination: its one writer is here, its readers
are `status`, `spool replay` and a shell's exit notice, so it is standard library only).

Names are loaded on first use: reading `agent.status` loads nothing else of the agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oneiric_session.common.lazy import lazy_exports

if TYPE_CHECKING:
    from oneiric_session.agent.core import DeliveryAgent, ReplayResult, run_agent, uncapped_spool
    from oneiric_session.agent.watch import ABNORMAL_EXIT_REASON, ALIVE_WRITE_SECONDS, FOREIGN_STALE_SECONDS

_EXPORTS = {
    "ABNORMAL_EXIT_REASON": "oneiric_session.agent.watch",
    "ALIVE_WRITE_SECONDS": "oneiric_session.agent.watch",
    "FOREIGN_STALE_SECONDS": "oneiric_session.agent.watch",
    "DeliveryAgent": "oneiric_session.agent.core",
    "ReplayResult": "oneiric_session.agent.core",
    "run_agent": "oneiric_session.agent.core",
    "uncapped_spool": "oneiric_session.agent.core",
}

__all__ = [
    "ABNORMAL_EXIT_REASON",
    "ALIVE_WRITE_SECONDS",
    "FOREIGN_STALE_SECONDS",
    "DeliveryAgent",
    "ReplayResult",
    "run_agent",
    "uncapped_spool",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
