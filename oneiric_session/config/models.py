"""The settings of the `session-buddy` provider: defaults, types, ranges, one-line descriptions.

`SessionBuddySettings` is a pydantic-settings model fed by one source: the values
`sources` merged (files, environment, arguments). Layering lives there, in the
standard library, so the shell can read its provider selection without pydantic
and every value keeps its source.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from oneiric_session.config.sources import (
    DEFAULT_IDLE_EXIT_SECONDS,
    DEFAULT_PROVIDER,
    UNKNOWN_HOME,
    expand_home,
)
from oneiric_session.tracking.destination import Tuning
from oneiric_session.tracking.limits import Limits

# The defaults live in the shell-side value types; read them from instances (NamedTuple fields).
_TUNING = Tuning()
_LIMITS = Limits()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(_Section):
    command: str | None = Field(
        None,
        description="Program serving MCP on stdio (unset: a $SESSION_BUDDY_PATH checkout, or bundled).",
    )
    args: list[str] = Field(
        default_factory=list, description="Arguments for `command` (JSON list in the environment)."
    )
    # repr=False: it may hold the server's own secrets (SESSION_BUDDY_SECRET)
    env: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Extra environment for the server process."
    )
    cwd: str | None = Field(None, description="Working directory of the server process (unset: inherited).")


class RetrySettings(_Section):
    attempts: int = Field(
        _TUNING.attempts, ge=1, le=20, description="Tries per delivery before it waits in the spool."
    )
    wait_min_seconds: float = Field(
        _TUNING.wait_min_seconds, ge=0, le=300, description="First back-off wait."
    )
    wait_max_seconds: float = Field(
        _TUNING.wait_max_seconds, ge=0, le=3600, description="Longest back-off wait."
    )
    multiplier: float = Field(
        _TUNING.multiplier, ge=1, le=10, description="Growth of the back-off between tries."
    )


class BreakerSettings(_Section):
    threshold: int = Field(
        _TUNING.breaker_threshold,
        ge=1,
        le=1000,
        description="Consecutive failures that open the circuit breaker.",
    )
    reset_seconds: float = Field(
        _TUNING.breaker_reset_seconds,
        ge=0,
        le=86400,
        description="How long the breaker stays open before a probe.",
    )


class TimeoutSettings(_Section):
    # The real Session-Buddy needs ~2.5 s to start and 5-7 s for its first call.
    connect_seconds: float = Field(
        _TUNING.connect_seconds, gt=0, le=600, description="Limit for starting/connecting to the server."
    )
    call_seconds: float = Field(_TUNING.call_seconds, gt=0, le=600, description="Limit for one tool call.")


def _home_expanded(value: Any) -> Any:
    """A path setting's leading `~` or `~user` expanded here, once, from the text given: only a
    leading one, as os.path expands it (pathlib shortens `./~x` to `~x`, which it would then read
    as the home of user `x`), so nothing later expands the Path again. A user this system does not
    know is refused with the setting's name (expanding it later raised into `status` or a shell)."""
    if not isinstance(value, str | PurePath) or "\x00" in str(value):
        return value  # (None, a wrong type, or a NUL: refused with the setting's name afterwards)
    expanded = expand_home(str(value))
    if expanded is None:
        raise ValueError(UNKNOWN_HOME)
    return expanded


class SpoolSettings(_Section):
    path: Path | None = Field(
        None, description="Spool database (unset: $XDG_STATE_HOME/oneiric-session/spool.sqlite3)."
    )
    _path_home = field_validator("path", mode="before")(_home_expanded)
    max_rows: int = Field(
        10000, ge=1, le=10_000_000, description="Most events kept waiting; the oldest go first."
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=65536,
        le=10 * 1024**3,
        description="Most bytes of spooled events (their JSON, dead letters included). The files on disk"
        " add SQLite's pages and indexes, and a WAL kept to a quarter of this (at most 4 MiB)"
        " between checkpoints: `status` shows both (spool_bytes, spool_disk_bytes).",
    )
    max_age_days: float = Field(
        30.0, gt=0, le=3650, description="Events older than this are dropped undelivered."
    )


class AgentSettings(_Section):
    idle_exit_seconds: float = Field(
        DEFAULT_IDLE_EXIT_SECONDS,
        ge=1,
        le=86400,
        description="The delivery agent exits after this long idle.",
    )
    window: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Calls the agent keeps in flight per server (unset: 16 for the bundled one, else 1).",
    )


class LimitSettings(_Section):
    max_string_chars: int = Field(
        _LIMITS.max_string_chars, ge=16, le=65536, description="Longest string in an event."
    )
    max_metadata_bytes: int = Field(
        _LIMITS.max_metadata_bytes, ge=256, le=1048576, description="Largest metadata, as JSON bytes."
    )
    max_metadata_depth: int = Field(
        _LIMITS.max_metadata_depth, ge=1, le=64, description="Deepest metadata nesting."
    )
    max_component_chars: int = Field(
        _LIMITS.max_component_chars, ge=1, le=64, description="Longest component name."
    )


class SessionBuddySettings(BaseSettings):
    """Every setting of the `session-buddy` provider (the selection `provider` included)."""

    model_config = SettingsConfigDict(extra="forbid")

    # Stripped as the shell's own selection is (`sources.Merged.selection`): every path sees one name.
    provider: str = Field(DEFAULT_PROVIDER, min_length=1, description="The session tracker provider to use.")

    @field_validator("provider", mode="before")
    @classmethod
    def _stripped(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    transport: Literal["stdio", "http"] = Field(
        "stdio", description="How to reach the server: stdio or http."
    )
    url: str | None = Field(
        None, description="Streamable HTTP endpoint, e.g. http://host:port/mcp (for http)."
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings, description="The stdio server's launch line."
    )
    session_buddy_path: str | None = Field(
        None, description="A Session-Buddy checkout to launch with uv (SESSION_BUDDY_PATH)."
    )
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retries of transient failures.")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings, description="The circuit breaker.")
    timeouts: TimeoutSettings = Field(
        default_factory=TimeoutSettings, description="Connection and call limits."
    )
    exit_wait_seconds: float = Field(
        2.0, ge=0, le=60, description="At shell exit, the longest wait for an end still being recorded."
    )
    spool: SpoolSettings = Field(default_factory=SpoolSettings, description="The durable outbox on disk.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The per-user delivery agent.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Sanitization caps for events.")
    token_env: str = Field(
        "SESSION_BUDDY_TOKEN", min_length=1, description="Environment variable holding the server token."
    )
    token_file: Path | None = Field(None, description="File holding the token (must be mode 0600).")
    _token_file_home = field_validator("token_file", mode="before")(_home_expanded)
    report_cwd: str | None = Field(
        None, description="environment.cwd sent to the server (unset: stdio the real cwd, http /tmp)."
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The merged layers arrive as init arguments; pydantic-settings reads nothing else.
        return (init_settings,)
