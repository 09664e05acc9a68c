"""`SessionEventEmitter`: the drop-in for `oneiric.shell.session_tracker.SessionEventEmitter`.

Oneiric 0.17.0's `AdminShell` builds the emitter and awaits `emit_session_start`
inside `asyncio.run` (or schedules it with `create_task` on a running loop), then
at exit runs `emit_session_end` from a daemon thread it never joins. So every
call here does its work synchronously, before any `await`, through a tracker that
only writes locally (the spool); delivery never depends on the caller's loop or
thread. Nothing here raises into the host.

Exit order: `atexit` runs hooks last-registered first. On the `asyncio.run` path
the emitter is built before Oneiric registers its hook, so ours runs after it; on
the running-loop path the start task runs after Oneiric registered, so ours runs
first. The hook is correct in either order: it waits for an end another thread
has begun, and ends itself any session still open; a later end of the same
session is a no-op that answers True.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from oneiric_session.tracking.tracker import Tracker

logger = logging.getLogger("oneiric_session")

# Used when the tracker does not carry the configured `exit_wait_seconds`.
DEFAULT_EXIT_WAIT_SECONDS = 2.0
DEFAULT_EXIT_REASON = "user_exit"


class SessionEventEmitter:
    """Reports admin-shell sessions through the configured tracker; never raises."""

    def __init__(
        self,
        component_name: str,
        session_buddy_path: str | None = None,
        *,
        tracker: Tracker | None = None,
        settings_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component_name = component_name
        self.session_buddy_path = session_buddy_path
        self._settings_dir = settings_dir
        self._tracker = tracker
        self._owns_tracker = tracker is None
        self._clock = clock
        # One condition guards the session table; no tracker call is made while holding it.
        self._cond = threading.Condition(threading.RLock())
        self._open: dict[str, float] = {}  # handle -> clock() at start
        self._ending: set[str] = set()  # an end is being recorded (possibly in another thread)
        self._ended: dict[str, bool] = {}  # handle -> what the tracker answered
        self._hooked = False
        self._pid = os.getpid()  # a child forked from this process leaves without ending anything
        self._hook()

    # -- the drop-in API (awaited by the host) ------------------------------------

    async def emit_session_start(
        self, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        """Record a session start; return its stable local handle at once (None if not recorded)."""
        return self.start_session(shell_type, metadata)

    async def emit_session_end(self, session_id: str, metadata: Mapping[str, Any] | None = None) -> bool:
        """Record the end of `session_id` before returning; True once it is recorded."""
        return self.end_session(session_id, metadata=metadata)

    async def close(self) -> None:
        """Release the tracker once no session is open (open ones are left to the exit hook)."""
        self._release()

    # -- the same, synchronously (used by AdminShell and by the exit hook) --------

    def start_session(self, shell_type: str, metadata: Mapping[str, Any] | None = None) -> str | None:
        try:
            self._hook()
            tracker = self._get_tracker()
            started = self._clock()
            handle = tracker.start(
                component_name=self.component_name, shell_type=shell_type, metadata=metadata
            )
            if handle:
                with self._cond:
                    self._open[handle] = started
            return handle
        except Exception:
            logger.warning("oneiric-session: the session start was not recorded", exc_info=True)
            return None

    def end_session(
        self,
        handle: str | None,
        *,
        exit_reason: str | None = None,
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the end once; a second end of the same session answers the first one's result.

        `exit_reason` and `duration_seconds` may also come in `metadata`, as Oneiric passes
        them; a missing duration is measured from the start this emitter remembers.
        """
        if not handle:
            return False
        try:
            extra = dict(metadata or {})
            reason = exit_reason or extra.pop("exit_reason", None) or DEFAULT_EXIT_REASON
            given = extra.pop("duration_seconds", None)
            duration = duration_seconds if duration_seconds is not None else given
            with self._cond:
                if handle in self._ended:
                    return self._ended[handle]
                if handle in self._ending:
                    return self._wait_for(handle, self._exit_wait_seconds())
                self._ending.add(handle)
                started = self._open.pop(handle, None)
            if duration is None and started is not None:
                duration = round(max(0.0, self._clock() - started), 3)
            recorded = False
            try:
                recorded = bool(
                    self._get_tracker().end(
                        handle, exit_reason=str(reason), duration_seconds=duration, metadata=extra or None
                    )
                )
            finally:
                with self._cond:
                    self._ending.discard(handle)
                    self._ended[handle] = recorded
                    self._cond.notify_all()
            return recorded
        except Exception:
            logger.warning("oneiric-session: the session end was not recorded", exc_info=True)
            return False

    def shutdown(self, *, exit_reason: str = DEFAULT_EXIT_REASON, wait_seconds: float | None = None) -> None:
        """Wait (bounded) for ends in flight, end every session still open, release the tracker."""
        try:
            deadline = self._clock() + (self._exit_wait_seconds() if wait_seconds is None else wait_seconds)
            with self._cond:
                left_open = list(self._open)
            for handle in left_open:
                self.end_session(handle, exit_reason=exit_reason)
            with self._cond:
                while self._ending:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                still_ending = len(self._ending)
            if still_ending:
                logger.warning(
                    "oneiric-session: %d session end(s) still being recorded at exit", still_ending
                )
            self._release()
        except Exception:
            logger.warning("oneiric-session: exit clean-up failed", exc_info=True)

    # -- internals ----------------------------------------------------------------

    def _at_exit(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child (a daemonising helper) leaving: the sessions are its parent's
        try:
            self.shutdown()
        except KeyboardInterrupt:  # Ctrl-C during the bounded wait: one calm line, no traceback
            try:
                with self._cond:
                    waiting = len(self._ending) + len(self._open)
                sys.stderr.write(
                    f"oneiric-session: interrupted at exit; {waiting} session end(s) not waited for "
                    "(what is in the spool is delivered later)\n"
                )
                sys.stderr.flush()
            except BaseException:  # a second Ctrl-C, or stderr gone: say nothing
                pass

    def _hook(self) -> None:
        """Register the exit hook (at construction, and again if a released emitter is reused)."""
        with self._cond:
            if self._hooked:
                return
            try:
                atexit.register(self._at_exit)
                self._hooked = True
            except Exception:  # never raise into the host, even from the constructor
                logger.warning("oneiric-session: could not register the exit hook", exc_info=True)

    def _release(self) -> None:
        """Unhook and close a tracker this emitter resolved; a later call resolves it again."""
        with self._cond:
            if self._open or self._ending:
                return
            atexit.unregister(self._at_exit)
            self._hooked = False
            if not self._owns_tracker:
                return
            tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.close()
            except Exception:
                logger.warning("oneiric-session: closing the tracker failed", exc_info=True)

    def _wait_for(self, handle: str, timeout: float) -> bool:
        """Called holding the condition: wait for another thread's end of `handle`."""
        self._cond.wait_for(lambda: handle in self._ended, timeout)
        return self._ended.get(handle, False)

    def _exit_wait_seconds(self) -> float:
        value = getattr(self._tracker, "exit_wait_seconds", None)
        return float(value) if isinstance(value, int | float) else DEFAULT_EXIT_WAIT_SECONDS

    def _get_tracker(self) -> Tracker:
        with self._cond:
            if self._tracker is None:
                from oneiric_session.tracking.registry import resolve_tracker

                overrides = (
                    {"session_buddy_path": self.session_buddy_path} if self.session_buddy_path else None
                )
                self._tracker = resolve_tracker(self._settings_dir, overrides=overrides)
            return self._tracker
