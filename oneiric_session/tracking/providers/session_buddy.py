"""The `session-buddy` provider, shell side: write each event to the spool and wake the delivery agent.

The shell's process never speaks MCP (see DESIGN.md): start() and end() build and
sanitize the event, append it durably (~1 ms), send one non-blocking datagram to
the agent (or spawn it, ~0.5 ms) and return. Nothing here waits for a server or
raises into the shell: a spool failure is one log line and a counted loss.
The token travels to the agent in memory only (the wake-up datagram or the
spawned agent's environment), never through the spool.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneiric_session import wakeup
from oneiric_session.config.shell_view import ShellView
from oneiric_session.errors import ConfigError, UnsafeSpoolError
from oneiric_session.spool.outbox import Outbox
from oneiric_session.tracking import events, procinfo

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig

__all__ = ["HANDLE_PREFIX", "SessionBuddyTracker", "create"]

logger = logging.getLogger("oneiric_session")

HANDLE_PREFIX = "local-"
# Loss reasons (counted in `losses`).
LOSS_SPOOL = "spool_error"
LOSS_NO_START = "no_start"

Waker = Callable[..., wakeup.WakeResult]


class SessionBuddyTracker:
    """Spools sessions for the delivery agent. Thread-safe; never raises."""

    provider = "session-buddy"

    def __init__(
        self,
        config: ShellView | LoadedConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        waker: Waker = wakeup.wake_or_spawn,
    ) -> None:
        view = config if isinstance(config, ShellView) else ShellView.from_config(config)
        _refuse_special_token_file(view)
        self._view = view
        self.destination = view.destination
        self.limits = view.limits
        self.spool_path = Path(view.spool_path)
        self.exit_wait_seconds = view.exit_wait_seconds
        self._report_cwd = view.report_cwd
        # Each event one file, taken into the spool by the agent: no SQLite in the shell.
        self._outbox = Outbox(
            self.spool_path, caps=(view.spool_max_rows, view.spool_max_bytes, view.spool_max_age_seconds)
        )
        self._clock = clock
        self._waker = waker
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # handle -> clock() at start
        self._ended: set[str] = set()
        self._token_warned = False
        self._refusal_logged = False
        self.losses: collections.Counter[str] = collections.Counter()

    # -- Tracker --------------------------------------------------------------

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        """Spool a session start and wake the agent; the local handle, or None if nothing was recorded."""
        try:
            event = events.build_start_event(
                component_name=component_name,
                shell_type=shell_type,
                metadata=metadata,
                limits=self.limits,
                report_cwd=self._report_cwd,
            )
            handle = HANDLE_PREFIX + os.urandom(16).hex()  # random like uuid4().hex; `uuid` costs ~2 ms
            me, where = procinfo.identify(), procinfo.origin()
            started = self._clock()
            self._outbox.append_start(
                handle,
                self.destination,
                event,
                pid=me.pid,
                pid_start_time=me.start_time,
                boot_id=me.boot_id,
                host=where.host,
                pid_ns=where.pid_ns,
            )
        except Exception as exc:  # SpoolError, or anything else: never into the shell
            self._lost(LOSS_SPOOL, "session start", exc)
            return None
        with self._lock:
            self._started[handle] = started
        self._wake()
        return handle

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Spool the end of `handle` and wake the agent; True once the end is on disk."""
        with self._lock:
            if handle in self._ended:
                return True
            started = self._started.get(handle)
        if duration_seconds is None and started is not None:
            duration_seconds = max(0.0, self._clock() - started)
        try:
            event = events.build_end_event(
                session_id=handle,
                exit_reason=exit_reason,
                duration_seconds=duration_seconds,
                metadata=metadata,
                limits=self.limits,
            )
            written = self._outbox.append_end(handle, self.destination, event)
        except Exception as exc:  # SpoolError, or anything else: never into the shell
            self._lost(LOSS_SPOOL, "session end", exc)
            return False
        if not written:
            # This session's end is written already (by another thread or process of this shell).
            self.losses[LOSS_NO_START] += 1
            return False
        with self._lock:
            self._ended.add(handle)
            self._started.pop(handle, None)
        self._wake()
        return True

    def health(self) -> bool:
        """True when the spool can take events (not: the server is up)."""
        return self._outbox.writable()

    def close(self) -> None:
        """Say so on stderr when this shell's events still wait for the server; idempotent."""
        notice = self.pending_notice()
        if notice:
            print(notice, file=sys.stderr)

    # -- reporting ------------------------------------------------------------

    def pending_notice(self) -> str | None:
        """One line for stderr when this shell's events still wait because the server was unreachable."""
        if not self._started and not self._ended:
            return None
        try:
            from oneiric_session.agent.status import failing_destination

            depth, reason = failing_destination(self.spool_path, self.destination.key)
        except Exception:
            return None
        if not depth or reason is None:
            return None
        return (
            f"oneiric-session: {depth} event(s) waiting for the server ({reason}); "
            "they will be delivered later (see `oneiric-session status`)"
        )

    # -- internals ------------------------------------------------------------

    def _token(self) -> str | None:
        try:
            return self._view.token()
        except ConfigError as exc:
            if not self._token_warned:
                self._token_warned = True
                logger.warning("oneiric-session: the token cannot be read: %s", exc)
            return None

    def _wake(self) -> None:
        try:
            token = self._token()
            extra = {}
            secrets = self.destination.secrets()
            if secrets:  # secret server.env values: in memory only, like the token
                extra["secrets"] = {self.destination.key: secrets}
            self._waker(
                self.spool_path,
                tokens={self.destination.key: token} if token else None,
                idle_exit_seconds=self._view.agent_idle_exit_seconds,
                **extra,
            )
        except Exception as exc:  # the event is on disk: the agent's poll or the next shell finds it
            logger.warning("oneiric-session: could not wake the delivery agent: %s", exc)

    def _lost(self, reason: str, what: str, exc: BaseException) -> None:
        self.losses[reason] += 1
        if isinstance(exc, UnsafeSpoolError):
            if self._refusal_logged:
                return  # one line per shell: the same refusal would follow at every event
            self._refusal_logged = True
        logger.warning("oneiric-session: %s not recorded: %s", what, exc)


def _refuse_special_token_file(view: ShellView) -> None:
    """A token_file that is a FIFO or a device is a configuration error now (tracking off), never a wait."""
    if view.token_file is None or view.environ.get(view.token_env):
        return
    import stat

    try:
        mode = view.token_file.stat().st_mode  # (its `~` expanded when it was validated)
    except OSError:
        return  # absent or unreadable: reported when the token is read, as before
    if not stat.S_ISREG(mode):
        view.token()  # raises the ConfigError that names it


def create(config: ShellView | LoadedConfig | None) -> SessionBuddyTracker:
    """The registry's factory for `session-buddy`: the validated settings, cached (`ShellView`) or not."""
    if config is None:
        from oneiric_session.config.view_store import load_shell_view

        config = load_shell_view()
    return SessionBuddyTracker(config)
