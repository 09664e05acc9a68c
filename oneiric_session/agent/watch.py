"""The agent's watch on open sessions: a shell that died without an end gets one, "abnormal".

A session's pid counts only with its start time and boot id (a reused pid, a reboot), and only
on the host and in the PID namespace it was started in (`procinfo`). The moment each live shell
was last seen is kept in memory and written to the spool every ALIVE_WRITE_SECONDS, so the end
of a shell that dies carries the duration up to the last moment it was seen alive.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from oneiric_session.spool import OpenSession, Spool
from oneiric_session.tracking import events, procinfo
from oneiric_session.tracking.limits import Limits

__all__ = ["ABNORMAL_EXIT_REASON", "ALIVE_WRITE_SECONDS", "FOREIGN_STALE_SECONDS", "SessionWatch"]

logger = logging.getLogger("oneiric_session.agent")

ABNORMAL_EXIT_REASON = "abnormal"
# How often "still alive" is written to the spool; the agent keeps the exact moment in memory,
# so this only bounds what is lost to an agent crash followed by the shell's death.
ALIVE_WRITE_SECONDS = 10.0
# A session started on another host or in another PID namespace (a container sharing the state
# directory, an NFS home) is not this agent's to judge: its pid means nothing here. It is ended as
# "abnormal" only once nothing was heard of it (its start, or an "alive" written by an agent that
# can see it, every ALIVE_WRITE_SECONDS) for this long: far longer than any gap of a live shell.
FOREIGN_STALE_SECONDS = 7 * 86400.0


class SessionWatch:
    """Checks the open sessions of `spool` on each `check()`; `on_end()` after it spooled an end."""

    def __init__(self, spool: Spool, *, wall: Callable[[], float], on_end: Callable[[], None]) -> None:
        self._spool = spool
        self._wall = wall
        self._on_end = on_end
        self._seen_alive: dict[str, float] = {}  # handle -> wall time last seen alive
        self._alive_written: dict[str, float] = {}  # handle -> wall time last written

    def check(self) -> list[OpenSession]:
        """End the dead sessions as "abnormal"; the ones still open."""
        now = self._wall()
        still_open = []
        for session in self._spool.open_sessions():
            if self._alive(session, now) or self._spool.outbox_has(session.handle, "end"):
                # (An end in the outbox: the shell wrote it before it died; it is taken in next.)
                still_open.append(session)
                continue
            self._end_abnormally(session, stale=not procinfo.is_visible(session.host, session.pid_ns))
        return still_open

    def _alive(self, session: OpenSession, now: float) -> bool:
        """Whether this session's shell may still be running (what cannot be judged here counts)."""
        if session.pid is None:
            return True  # nothing to watch: only its own end closes it
        if not procinfo.is_visible(session.host, session.pid_ns):
            # Left to an agent that can see it, until nothing was heard of it for FOREIGN_STALE_SECONDS.
            return now - max(session.last_seen_alive, session.started_at) < FOREIGN_STALE_SECONDS
        if not procinfo.is_alive(session.pid, session.pid_start_time, session.boot_id):
            return False
        self._seen_alive[session.handle] = now
        if now - self._alive_written.get(session.handle, session.last_seen_alive) >= ALIVE_WRITE_SECONDS:
            self._spool.mark_alive(session.handle, now)
            self._alive_written[session.handle] = now
        return True

    def _end_abnormally(self, session: OpenSession, *, stale: bool = False) -> None:
        last_seen = max(session.last_seen_alive, self._seen_alive.pop(session.handle, 0.0))
        self._alive_written.pop(session.handle, None)
        metadata: dict[str, Any] = {"detected_by": "delivery agent", "pid": session.pid}
        if stale:  # another host's or namespace's shell, not heard of for FOREIGN_STALE_SECONDS
            metadata.update(host=session.host, stale_after_seconds=FOREIGN_STALE_SECONDS)
        event = events.build_end_event(
            session_id=session.handle,
            exit_reason=ABNORMAL_EXIT_REASON,
            duration_seconds=max(0.0, last_seen - session.started_at),
            metadata=metadata,
            limits=Limits(),
            now=dt.datetime.fromtimestamp(last_seen, dt.UTC),
        )
        if self._spool.append_end(session.handle, None, event):
            logger.info(
                "session %s (pid %s) ended without an end: recorded as abnormal", session.handle, session.pid
            )
            self._on_end()
