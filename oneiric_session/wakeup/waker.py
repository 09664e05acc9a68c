"""What a shell does once its row is in the spool: wake the agent, or start one (standard library only).

Run by the shell's process, before its prompt and at its exit, so it stays cheap to import: the
socket through the C module `_socket` only to wake, the lock only when nobody listens, and
`spawn` (starting one agent for many shells, the hand-off to it) only when the lock is free. A
wake-up is one non-blocking datagram.

Why a shell that skips the spawn still gets its row delivered: it appended before it
looked, and an agent holding the lock, or one whose marker is still there, takes (or
re-takes) the lock after that look and then scans the spool (it binds its socket first,
then reads every pending row; an idle agent handing over looks once more after releasing
the lock).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from oneiric_session.wakeup.message import carried, encode_wakeup
from oneiric_session.wakeup.paths import published_socket, socket_path

__all__ = ["WakeResult", "wake", "wake_or_spawn"]

# "starting": nobody listens yet, but an agent holds the lock or is being spawned; it reads the spool.
WakeResult = Literal["woken", "starting", "spawned", "failed"]


def wake(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    handover: bool = False,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Send one wake-up without blocking; True when an agent is listening. Where this shell's
    environment puts the socket, else where the agent's note says it listens."""
    spawned = sys.modules.get("oneiric_session.wakeup.spawn")  # loaded only by a process that spawned
    if spawned is not None:
        spawned.reap_spawned()
    path = socket_path(spool_path)
    message = carried(encode_wakeup(tokens, handover=handover, secrets=secrets), handover=handover)
    if path is not None and _send(path, message):
        return True
    published = published_socket(spool_path)  # (only when nobody listens at this shell's path)
    return published is not None and published != path and _send(published, message)


def _send(path: Path, message: bytes) -> bool:
    """One datagram to `path` without blocking; True when someone listens there."""
    try:
        # `_socket`, the C module `socket` wraps: importing `socket` itself (its enums, selectors)
        # costs a shell ~2 ms before its prompt, for one datagram.
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.sendto(message, os.fsencode(path))
        finally:
            sock.close()
    except BlockingIOError:
        return True  # its queue is full: it is alive and has wake-ups to read
    except OSError:
        return False  # no socket, or a stale one nobody reads
    return True


def wake_or_spawn(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    idle_exit_seconds: float | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> WakeResult:
    """Wake the agent of this spool; else leave it to one starting; else start one.

    The caller's row must already be in the spool (see the module doc for why).
    """
    if wake(spool_path, tokens=tokens, secrets=secrets):
        return "woken"
    from oneiric_session.wakeup.lock import agent_holds_lock  # only now: a woken agent needs no look

    if agent_holds_lock(spool_path):
        return "starting"  # binding its socket, or handing over: it reads the spool after that
    from oneiric_session.wakeup.spawn import spawn_unless_under_way  # only when nobody listens

    return spawn_unless_under_way(
        spool_path, tokens=tokens, idle_exit_seconds=idle_exit_seconds, secrets=secrets
    )
