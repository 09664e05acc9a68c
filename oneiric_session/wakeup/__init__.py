"""How a shell wakes the delivery agent, and starts it when none runs (standard library only).

The agent listens on a Unix datagram socket kept in a private per-user directory
(mode 0700, like ssh-agent's and gpg-agent's), named after a hash of the spool's
path: one agent per spool, and a short path whatever the spool's path is. A wake-up
is one non-blocking datagram that may carry tokens (destination key -> token) so
the agent holds them in memory only, or ask it to step aside for `spool replay`;
the directory being private is what keeps another user from receiving them.
When nobody listens, the shell spawns the agent detached and never waits for it,
handing it the same message through a pipe only the agent inherits.
A lock file next to the spool decides which agent runs: only the lock holder
binds the socket, a second agent exits at once.

The package, by job: `paths` (where the lock, spawn marker, log and socket are; both sides),
`message` (the datagram's format; both sides), `waker` (the shell's side: wake, else leave it to
an agent starting, else spawn), `spawn` (one agent for many shells, and the hand-off the spawned
agent reads back), `lock` (`AgentLock`, the agent's; `agent_holds_lock`, the shell's look),
`listener` (`WakeupListener`, the agent's only).

Every shell imports this package: none of its modules imports more than the standard library
at import time, and what a shell needs only when nobody listens (`lock`, `spawn`) and the agent's
side (`listener`) are loaded on first use, so a shell that wakes a listening agent loads none
(each module costs a shell ~0.2 ms before its prompt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oneiric_session.common.lazy import lazy_exports
from oneiric_session.wakeup.message import MAX_DATAGRAM_BYTES, Wakeup, decode_wakeup, encode_wakeup
from oneiric_session.wakeup.paths import (
    agent_log_path,
    lock_path,
    socket_dir_problems,
    socket_path,
    spawn_marker_path,
)
from oneiric_session.wakeup.waker import WakeResult, wake, wake_or_spawn

if TYPE_CHECKING:
    from oneiric_session.wakeup.listener import WakeupListener
    from oneiric_session.wakeup.lock import AgentLock, agent_holds_lock
    from oneiric_session.wakeup.spawn import (
        HANDOFF_FD_ENV,
        SPAWN_STALE_SECONDS,
        clear_spawn_marker,
        spawn_agent,
        take_handoff,
    )

_LAZY = {
    "AgentLock": "oneiric_session.wakeup.lock",
    "agent_holds_lock": "oneiric_session.wakeup.lock",
    "WakeupListener": "oneiric_session.wakeup.listener",
    **dict.fromkeys(
        ("HANDOFF_FD_ENV", "SPAWN_STALE_SECONDS", "clear_spawn_marker", "spawn_agent", "take_handoff"),
        "oneiric_session.wakeup.spawn",
    ),
}

__all__ = [
    "HANDOFF_FD_ENV",
    "MAX_DATAGRAM_BYTES",
    "SPAWN_STALE_SECONDS",
    "AgentLock",
    "WakeResult",
    "Wakeup",
    "WakeupListener",
    "agent_holds_lock",
    "agent_log_path",
    "clear_spawn_marker",
    "decode_wakeup",
    "encode_wakeup",
    "lock_path",
    "socket_dir_problems",
    "socket_path",
    "spawn_agent",
    "spawn_marker_path",
    "take_handoff",
    "wake",
    "wake_or_spawn",
]


__getattr__ = lazy_exports(__name__, _LAZY)
