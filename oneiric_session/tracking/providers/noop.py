"""The `noop` provider: tracking off. Records nothing and imports nothing beyond the standard library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig


class NoopTracker:
    """Accepts every call and records nothing: start gives no handle, end reports nothing recorded."""

    provider = "noop"

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        return None

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        return False

    def close(self) -> None:
        pass

    def health(self) -> bool:
        return True


def create(config: LoadedConfig | None = None) -> NoopTracker:
    return NoopTracker()
