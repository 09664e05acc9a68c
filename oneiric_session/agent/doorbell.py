"""The agent's seat at its spool: the lock it holds and the wake-up socket it listens on, as the
serve loop uses them. While open, the socket is registered with the event loop, so a shell's
datagram wakes the loop at once; `open()` and `close()` are idempotent. `hand_over()` is the
idle exit without a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from oneiric_session.agent.status import META_PID
from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool
from oneiric_session.wakeup import AgentLock, Wakeup, WakeupListener

__all__ = ["Doorbell"]

logger = logging.getLogger("oneiric_session.agent")


class Doorbell:
    """`lock` is held by the caller; `listener` is None where no private socket directory exists."""

    def __init__(
        self, spool: Spool, lock: AgentLock, listener: WakeupListener | None, ring: Callable[[], None]
    ) -> None:
        self._spool = spool
        self._lock = lock
        self._listener = listener
        self._ring = ring
        self._loop: asyncio.AbstractEventLoop | None = None  # set while registered

    def open(self) -> bool:
        """Bind the socket (if any) and listen on it, then publish this agent's pid (whoever sees
        the pid can wake this agent); True when listening."""
        if self._loop is None and self._listener is not None and self._listener.open():
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._listener.fileno(), self._ring)
        self._spool.meta_set(META_PID, str(os.getpid()))
        return self._loop is not None

    def drain(self) -> Wakeup | None:
        """Every wake-up received since the last call (merged), or None when not listening."""
        if self._loop is None or self._listener is None:
            return None
        return self._listener.drain()

    def close(self) -> None:
        """Stop listening and unbind (a shell then sees nobody listening and spawns an agent), then
        withdraw the pid while the lock is still held (after a hand-over it is another agent's)."""
        if self._loop is not None and self._listener is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._listener.fileno())
        self._loop = None
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(SpoolError):
            if self._lock.held:
                self._spool.meta_set(META_PID, None)

    def hand_over(self) -> bool:
        """Idle exit without a gap: unbind, unlock, then look once more. True when this agent may exit.

        A shell that wrote just before we unbound finds its record in the last look; one that
        appended after sees nobody listening and spawns an agent that can take the lock. When
        the last look finds work and the lock is taken again, the caller calls `open()` again.
        """
        self.close()
        self._lock.release()
        try:
            work = bool(
                self._spool.pending_destinations()
                or self._spool.open_sessions()
                or self._spool.outbox_records()
            )
        except SpoolError:
            work = False
        try:
            return not (work and self._lock.acquire())
        except OSError as exc:  # the spool became unusable or foreign meanwhile: exit, say why
            logger.warning("not taking the lock again: %s", exc)
            return True
