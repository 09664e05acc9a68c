"""The `memory` provider: records sessions in this process, for tests (standard library only).

Every tracker the factory creates writes to one process-wide `SessionLog`, so a
test can read what the code under test recorded (see `oneiric_session.testing`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _copy(metadata: Any) -> dict[str, Any]:
    return dict(metadata) if isinstance(metadata, Mapping) else {}


@dataclass(frozen=True)
class RecordedSession:
    handle: str
    component_name: str
    shell_type: str
    metadata: dict[str, Any]
    started_at: datetime
    ended_at: datetime | None = None
    exit_reason: str | None = None
    duration_seconds: float | None = None
    end_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


class SessionLog:
    """Recorded sessions by handle, in start order; safe across threads (an end may come from atexit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, RecordedSession] = {}
        self._numbers = itertools.count(1)

    def add(self, make: Callable[[str], RecordedSession]) -> str:
        with self._lock:
            handle = f"memory-{next(self._numbers)}"
            self._sessions[handle] = make(handle)
            return handle

    def finish(self, handle: str, update: Callable[[RecordedSession], RecordedSession]) -> bool:
        with self._lock:
            session = self._sessions.get(handle)
            if session is None or session.ended:
                return False
            self._sessions[handle] = update(session)
            return True

    def sessions(self) -> list[RecordedSession]:
        with self._lock:
            return list(self._sessions.values())

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._numbers = itertools.count(1)


SHARED_LOG = SessionLog()


class MemoryTracker:
    """A tracker that records into a `SessionLog`, with query helpers for tests."""

    provider = "memory"

    def __init__(self, log: SessionLog | None = None, *, clock: Clock = _utc_now) -> None:
        self.log = log if log is not None else SessionLog()
        self._clock = clock
        self._closed = False

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        if self._closed:
            return None
        started_at = self._clock()
        return self.log.add(
            lambda handle: RecordedSession(handle, component_name, shell_type, _copy(metadata), started_at)
        )

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        if self._closed:
            return False
        ended_at = self._clock()

        def finish(session: RecordedSession) -> RecordedSession:
            duration = duration_seconds
            if duration is None:  # the host did not measure it
                duration = (ended_at - session.started_at).total_seconds()
            return replace(
                session,
                ended_at=ended_at,
                exit_reason=exit_reason,
                duration_seconds=duration,
                end_metadata=_copy(metadata),
            )

        return self.log.finish(handle, finish)

    def close(self) -> None:
        self._closed = True

    def health(self) -> bool:
        return not self._closed

    # Query helpers for tests.
    @property
    def sessions(self) -> list[RecordedSession]:
        return self.log.sessions()

    def get(self, handle: str) -> RecordedSession | None:
        return next((s for s in self.sessions if s.handle == handle), None)

    def open_sessions(self) -> list[RecordedSession]:
        return [s for s in self.sessions if not s.ended]

    def ended_sessions(self) -> list[RecordedSession]:
        return [s for s in self.sessions if s.ended]

    def for_component(self, component_name: str) -> list[RecordedSession]:
        return [s for s in self.sessions if s.component_name == component_name]

    def clear(self) -> None:
        self.log.clear()


def create(config: LoadedConfig | None = None) -> MemoryTracker:
    return MemoryTracker(SHARED_LOG)
