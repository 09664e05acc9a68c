"""The shell-side tracker interface every provider implements.

Calls on a tracker never block on a server and never raise into the shell.
Standard library only: this is imported by every shell, tracking on or off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """Reports a shell session's start and end. Implementations never raise."""

    provider: str

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        """Record a session start; return a stable local handle (None if nothing could be recorded)."""
        ...

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record the end of the session `handle`; True once the end is recorded durably."""
        ...

    def close(self) -> None:
        """Release resources; idempotent."""
        ...

    def health(self) -> bool:
        """True when the tracker can accept events (not: the server is up)."""
        ...
