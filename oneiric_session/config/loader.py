"""Validate the merged layers into `LoadedConfig`; turn every failure into one `ConfigError`."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from oneiric_session.common import paths
from oneiric_session.config import sources
from oneiric_session.config.files import read_token, shown_path
from oneiric_session.config.models import SessionBuddySettings
from oneiric_session.config.redact import redact
from oneiric_session.errors import ConfigError
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.limits import Limits
from oneiric_session.tracking.url_rules import url_problem

# Session-Buddy 0.23.0 has no stdio entry point; this is the launch line that serves stdio.
# What environment.cwd carries on http when report_cwd is unset: the real server refuses a cwd
# its own host does not have, and every host has this one (the shell's cwd rides in metadata).
HTTP_REPORT_CWD = "/tmp"
SESSION_BUDDY_STDIO_CODE = "from session_buddy.mcp.server import mcp; mcp.run('stdio', show_banner=False)"


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings, the source of every effective value, and what derives from them."""

    settings: SessionBuddySettings
    sources: dict[str, str]
    settings_dir: Path
    files: tuple[tuple[Path, bool], ...] = ()
    # Kept to read the token at send time; never shown (it may hold the token).
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @property
    def provider(self) -> str:
        return self.settings.provider

    def source_of(self, name: str) -> str:
        return sources.nearest_source(self.sources, name)

    def values(self) -> dict[str, Any]:
        """Every effective setting as dotted name -> JSON value, secrets redacted."""
        flat = _flatten(self.settings.model_dump(mode="json"))
        return {name: redact(name, value) for name, value in flat.items()}

    def destination(self) -> Destination:
        s = self.settings
        tuning = Tuning(
            attempts=s.retry.attempts,
            wait_min_seconds=s.retry.wait_min_seconds,
            wait_max_seconds=s.retry.wait_max_seconds,
            multiplier=s.retry.multiplier,
            breaker_threshold=s.breaker.threshold,
            breaker_reset_seconds=s.breaker.reset_seconds,
            connect_seconds=s.timeouts.connect_seconds,
            call_seconds=s.timeouts.call_seconds,
            window=s.agent.window or 0,
        )
        launch = self.launch()
        if launch is None:
            return Destination(transport="http", url=s.url, tuning=tuning)
        if launch == "command":
            command, args = _expanded(s.server.command or ""), tuple(s.server.args)
        elif launch == "checkout":
            path = _expanded(s.session_buddy_path or "")
            command, args = "uv", ("--directory", path, "run", "python", "-c", SESSION_BUDDY_STDIO_CODE)
        else:  # the bundled compatible server, so a fresh machine works with no configuration
            # Its database is resolved here, from the shell's environment, so that it is part of
            # the destination: the agent (spawned by whichever shell came first) never guesses it.
            db = sources.server_db_path(self.environ)
            command, args = sys.executable, ("-m", "oneiric_session", "serve", "--db", str(db))
        return Destination(
            command=command,
            args=args,
            env=tuple(sorted(s.server.env.items())),
            cwd=None if s.server.cwd is None else _expanded(s.server.cwd),
            tuning=tuning,
        )

    def launch(self) -> Literal["command", "checkout", "bundled"] | None:
        """Which stdio launch line the destination is (None: http): `server.command`, a Session-Buddy
        checkout (`session_buddy_path`), or the bundled server."""
        s = self.settings
        if s.transport == "http":
            return None
        # An explicit session_buddy_path argument (the emitter's) outranks a configured command.
        path_is_explicit = (
            self.source_of("session_buddy_path") == "argument" != self.source_of("server.command")
        )
        if s.server.command and not (s.session_buddy_path and path_is_explicit):
            return "command"
        return "checkout" if s.session_buddy_path else "bundled"

    def check_paths(self) -> None:
        """The paths the delivery agent uses must be absolute (`~` is expanded): the agent runs in
        `/`, started by whichever shell came first, so a path relative to one shell's directory
        would name another file there, or none. Only the paths of the launch line in use count."""
        s = self.settings

        def refuse(name: str, value: str, alternatives: str = "") -> None:
            origin = (
                f"environment variable {name}"
                if name == sources.DB_ENV
                else sources.describe(self.source_of(name))
            )
            if sources.expand_home(value) is None:
                raise ConfigError(f"{name}: {value!r} {sources.UNKNOWN_HOME}; from {origin}")
            raise ConfigError(
                f"{name}: {value!r} is a relative path; the delivery agent runs in /, so give an "
                f"absolute path{alternatives}; from {origin}"
            )

        if s.spool.path is not None and not s.spool.path.is_absolute():  # (`~` expanded: models)
            refuse("spool.path", shown_path(s.spool.path))
        launch = self.launch()
        if launch is None:
            return
        cwd = None if s.server.cwd is None else _expanded(s.server.cwd)
        if s.server.cwd is not None and not os.path.isabs(cwd or ""):
            refuse("server.cwd", s.server.cwd)
        if launch == "command":
            command = _expanded(s.server.command or "")
            if os.sep in command and not os.path.isabs(command) and cwd is None:
                refuse(
                    "server.command",
                    s.server.command or "",
                    " (or a program name found on PATH, or set server.cwd)",
                )
        elif launch == "checkout":
            if not os.path.isabs(_expanded(s.session_buddy_path or "")):
                refuse("session_buddy_path", s.session_buddy_path or "")
        elif (database := self.environ.get(sources.DB_ENV)) and not os.path.isabs(_expanded(database)):
            refuse(sources.DB_ENV, database)

    def report_cwd(self) -> str | None:
        """What environment.cwd carries: the setting; on http by default a directory any host has."""
        if self.settings.report_cwd is None and self.settings.transport == "http":
            return HTTP_REPORT_CWD
        return self.settings.report_cwd  # None: the shell's real cwd

    def limits(self) -> Limits:
        return Limits(**self.settings.limits.model_dump())

    def spool_path(self) -> Path:
        path = self.settings.spool.path  # (its `~` expanded when it was validated)
        return path if path is not None else paths.default_spool_path()

    def token(self) -> str | None:
        """The token from $token_env, else token_file (owner-only). Never log or show it."""
        s = self.settings
        origin = sources.describe(self.source_of("token_file"))
        return read_token(self.environ, s.token_env, s.token_file, origin)


def load_config(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read every layer and validate it. Raises ConfigError naming the file or variable and the setting."""
    env = os.environ if environ is None else environ
    return validate(sources.read(settings_dir, overrides=overrides, environ=env), environ=env)


def validate(merged: sources.Merged, *, environ: Mapping[str, str]) -> LoadedConfig:
    """Validate layers already merged (the registry reads them once for the selection)."""
    try:
        settings = SessionBuddySettings(**merged.values)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe_error(error, merged) for error in exc.errors())) from None
    _check_consistency(settings, merged)
    dumped = settings.model_dump(mode="json")
    _refuse_nul(dumped, merged)
    names = _flatten(dumped)
    config = LoadedConfig(
        settings=settings,
        sources={name: merged.source_of(name) for name in names},
        settings_dir=merged.settings_dir,
        files=tuple(merged.files),
        environ=environ,
    )
    config.check_paths()
    return config


def _refuse_nul(value: Any, merged: sources.Merged, name: str = "") -> None:
    """A NUL character anywhere is refused, naming the setting (never its value: it may be a
    secret): no path, command, argument or environment variable can hold one, and it raised
    ValueError where the value was used (a spool path lost every event, a server cwd retried
    for ever)."""
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{name}.{key}" if name else str(key)
            if "\0" in str(key):
                raise ConfigError(f"{name}: a name holds a NUL character; from {_origin(merged, name)}")
            _refuse_nul(item, merged, inner)
    elif isinstance(value, list):
        for item in value:
            _refuse_nul(item, merged, name)
    elif isinstance(value, str) and "\0" in value:
        raise ConfigError(f"{name}: holds a NUL character; from {_origin(merged, name)}")


def _origin(merged: sources.Merged, name: str) -> str:
    return sources.describe(merged.source_of(name))


def _describe_error(error: Any, merged: sources.Merged) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    unknown = error["type"] == "extra_forbidden"
    # A validator's own ValueError reads as its message, without pydantic's "Value error, ".
    message = "unknown setting" if unknown else str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    # An unknown setting's value is never shown: it is often a secret put where it does not
    # belong (`token:` in a file, a server secret under `server:` rather than `server.env:`).
    shown = None if unknown else redact(name, value)
    got = f" (got {shown!r:.80})" if isinstance(value, str | int | float | bool) and shown is value else ""
    return f"{name}: {message}{got}; from {sources.describe(merged.source_of(name))}"


def _check_consistency(settings: SessionBuddySettings, merged: sources.Merged) -> None:
    def origin(name: str) -> str:
        return sources.describe(merged.source_of(name))

    if settings.transport == "http" and not settings.url:
        raise ConfigError(f"url: required when transport is 'http' (transport from {origin('transport')})")
    problem = url_problem(settings.url) if settings.url else None
    if problem is not None:  # (the value is never named)
        raise ConfigError(f"url: {problem}; from {origin('url')}")
    if settings.retry.wait_min_seconds > settings.retry.wait_max_seconds:
        raise ConfigError(
            f"retry.wait_min_seconds ({settings.retry.wait_min_seconds}) is greater than "
            f"retry.wait_max_seconds ({settings.retry.wait_max_seconds}); "
            f"from {origin('retry.wait_min_seconds')} and {origin('retry.wait_max_seconds')}"
        )


def _expanded(path: str) -> str:
    """`path` with a leading `~` expanded (`sources.expand_home`); as given where it names a user
    this system does not know (`check_paths` refuses it)."""
    return sources.expand_home(path) or path


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
