"""What the shell side needs from the settings, cached once validated (standard library only on a hit).

Validating the settings imports pydantic and pydantic-settings (~140 ms), far over
the shell's start-up budget (issue 5: +5 ms). So the shell asks `cached_view()`
first: its key is a SHA-256 over everything the loader would read (the bytes of
every settings file it considers, the variables it reads, the overrides), plus
what derived values depend on (HOME, XDG_STATE_HOME for the default spool path,
the interpreter for the bundled server's launch line) and the code that
validates (package version and the loader's source files). A hit is a small
JSON file; a miss runs the full `load_config` and `view_store.store()` writes the
result (the cache's write side, loaded only at a miss), so every value is validated
by the pydantic models once per change of any of these. Errors are not cached: a
broken configuration is validated (and reported) on every start until it is fixed.

Entries live in `<state dir>/config-cache/`, owner-only, written atomically;
at most `view_store.MAX_ENTRIES` are kept. A corrupt or foreign entry is ignored (and
replaced by the next store). The token is never part of an entry or its key.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import oneiric_session
from oneiric_session.common.digest import sha256_hex
from oneiric_session.common.record import Record
from oneiric_session.config import sources
from oneiric_session.config.files import read_bounded, read_token
from oneiric_session.errors import ConfigError

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.tracking.limits import Limits

__all__ = [
    "CACHE_DIR_NAME",
    "CACHE_FORMAT",
    "ShellView",
    "cache_dir",
    "cache_key",
    "cached_view",
    "entry_path",
    "ours",
    "read_cached",
]

CACHE_DIR_NAME = "config-cache"
# Bumped when the entry's shape changes (old entries then never match).
# 2: agent_idle_exit_seconds; 3: report_cwd resolved for http; 4: a url's query secrets kept out
# (an entry of an older format is deleted at the next miss, `view_store.prune`: format 3's could
# hold one in clear; since format 4 the format is in the entry's name too, so pruning opens no entry).
CACHE_FORMAT = 4
# Variables read outside the settings layers: `~` expansion, the default spool path, and the
# bundled server's default database (`sources.server_db_path`, from this process's environment).
_DERIVED_ENV = ("HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
# The code that turns settings into a view: editing it (an editable install) invalidates entries.
_PACKAGE_DIR = Path(__file__).parent.parent
_CODE_FILES = (
    "config/models.py",
    "config/loader.py",
    "config/sources.py",
    "config/files.py",
    "config/shell_view.py",
    "tracking/destination.py",
    "tracking/destination_secrets.py",
    "tracking/url_rules.py",
    "tracking/limits.py",
    "common/paths.py",
)


class ShellView(Record):
    """The validated settings the shell-side tracker uses (a Record: see common/record.py)."""

    provider: str
    provider_source: str
    destination: Destination
    limits: Limits
    spool_path: Path
    spool_max_rows: int
    spool_max_bytes: int
    spool_max_age_seconds: float
    exit_wait_seconds: float
    report_cwd: str | None
    token_env: str
    token_file: Path | None
    token_file_source: str
    agent_idle_exit_seconds: float  # handed to an agent this shell spawns
    # Where the token variable is read at send time; never stored, never shown.
    environ: Mapping[str, str] = os.environ

    def __repr__(self) -> str:
        return f"ShellView(provider={self.provider!r}, destination={self.destination.describe()!r})"

    @classmethod
    def from_config(cls, config: LoadedConfig) -> ShellView:
        s = config.settings
        return cls(
            provider=s.provider,
            provider_source=config.source_of("provider"),
            destination=config.destination(),
            limits=config.limits(),
            spool_path=Path(config.spool_path()),
            spool_max_rows=s.spool.max_rows,
            spool_max_bytes=s.spool.max_bytes,
            spool_max_age_seconds=s.spool.max_age_days * 86400.0,
            exit_wait_seconds=float(s.exit_wait_seconds),
            report_cwd=config.report_cwd(),
            token_env=s.token_env,
            token_file=s.token_file,
            token_file_source=config.source_of("token_file"),
            agent_idle_exit_seconds=float(s.agent.idle_exit_seconds),
            environ=config.environ,
        )

    def token(self) -> str | None:
        """The token from $token_env, else token_file (owner-only). Never log or show it."""
        return read_token(
            self.environ, self.token_env, self.token_file, sources.describe(self.token_file_source)
        )

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        del data["environ"]
        data["destination"] = json.loads(self.destination.to_json())
        data["limits"] = self.limits._asdict()
        data["spool_path"] = str(self.spool_path)
        data["token_file"] = None if self.token_file is None else str(self.token_file)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], environ: Mapping[str, str]) -> ShellView:
        # Imported here: a shell whose provider needs no settings (noop) never loads them.
        from oneiric_session.tracking.destination import Destination
        from oneiric_session.tracking.limits import Limits

        fields = dict(data)
        fields["destination"] = Destination.from_json(json.dumps(fields["destination"]))
        fields["limits"] = Limits(**fields["limits"])
        fields["spool_path"] = Path(fields["spool_path"])
        fields["token_file"] = None if fields["token_file"] is None else Path(fields["token_file"])
        return cls(**fields, environ=environ)


def cached_view(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ShellView | None, str | None]:
    """(the cached view or None, the key to store under or None when this configuration cannot be cached)."""
    env = os.environ if environ is None else environ
    key = cache_key(settings_dir, overrides=overrides, environ=env)
    cached = read_cached(key, env) if key is not None else None
    # A bare selection (left for a provider needing no settings) is no view: validate again.
    return (cached if isinstance(cached, ShellView) else None), key


def read_cached(key: str, environ: Mapping[str, str]) -> ShellView | tuple[str, str] | None:
    """The entry under `key`: a validated view, a bare selection (provider, source) that
    `view_store.store` left for a provider needing no settings, or None (absent, corrupt, foreign)."""
    entry = _read_trusted(key)
    if entry is None:
        return None
    try:
        if "view" in entry:
            return ShellView.from_json(entry["view"], environ)
        provider, source = entry["selection"]
        if isinstance(provider, str) and isinstance(source, str):
            return provider, source
    except Exception:  # corrupt or foreign: validate again
        pass
    return None


def cache_dir() -> Path:
    """`<state dir>/config-cache`. On Linux computed as platformdirs does (importing it costs ~2 ms)."""
    if sys.platform.startswith("linux"):
        base = os.environ.get("XDG_STATE_HOME", "")
        if not os.path.isabs(base):
            home = os.environ.get("HOME", "")
            base = os.path.join(home, ".local", "state") if os.path.isabs(home) else ""
        if base:
            return Path(base) / "oneiric-session" / CACHE_DIR_NAME
    from oneiric_session.common import paths

    return paths.state_dir() / CACHE_DIR_NAME


def cache_key(
    settings_dir: str | os.PathLike[str] | None,
    *,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str],
) -> str | None:
    """SHA-256 over everything the view depends on; None when it cannot be known (never cached)."""
    try:
        directory = sources.resolve_settings_dir(settings_dir, environ)
        files = sources.settings_files(directory, environ)
        parts: list[Any] = [
            CACHE_FORMAT,
            oneiric_session.__version__,
            sys.executable,
            os.getuid() if hasattr(os, "getuid") else None,
            str(directory),
            [_code_stamp(name) for name in _CODE_FILES],
            [[str(path), _file_digest(path)] for path in files],
            sorted(sources.relevant_environ(environ).items()),
            [[name, os.environ.get(name)] for name in _DERIVED_ENV],
            environ.get(sources.DB_ENV),
            sorted((str(k), v) for k, v in (overrides or {}).items()),
        ]
        material = json.dumps(parts, default=repr, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ConfigError, OSError, TypeError, ValueError):
        return None
    return sha256_hex(material)


def _code_stamp(name: str) -> list[int]:
    st = os.stat(_PACKAGE_DIR / name)
    return [st.st_mtime_ns, st.st_size]


def _file_digest(path: Path) -> str | None:
    """The SHA-256 of the file's bytes, or None when it is absent."""
    try:
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory")  # the loader reports it: never cached
        if not os.path.lexists(path):
            return None
        # A FIFO, a device or an oversized file is a ConfigError here, at once: never cached, and
        # the loader reports it (a FIFO is never opened for a blocking read).
        return sha256_hex(read_bounded(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.v{CACHE_FORMAT}.json"


def _read_trusted(key: str) -> dict[str, Any] | None:
    """The entry under `key` if it is ours, in our own directory, of this format and key."""
    path = entry_path(key)
    try:
        with open(path, "rb") as file:
            # An entry names the server command the agent runs: trust only our own, in our own directory.
            if not (ours(os.fstat(file.fileno())) and ours(os.stat(path.parent))):
                return None
            entry = json.loads(file.read())
    except Exception:  # absent, unreadable or corrupt
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
        return None
    return entry


def ours(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else."""
    return st.st_uid == os.getuid() and not st.st_mode & 0o022
