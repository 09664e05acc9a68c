"""Where settings come from, lowest precedence first, and the names they go by (standard library only).

The shell reads its provider selection through this module without pydantic;
full validation (`loader`) runs only when the selected provider needs settings.
Reading one file (bounded, and YAML through PyYAML only when a file exists) is `files`' job;
this module finds the files and variables, interprets their shapes and merges the layers.
Every value keeps the label of the layer it came from: "default", "file:<path>",
"env:<VAR>" or "argument".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from oneiric_session.common.record import Record
from oneiric_session.config.files import read_file
from oneiric_session.errors import ConfigError

CATEGORY = "session_tracker"
DEFAULT_PROVIDER = "session-buddy"
# How long an agent with nothing to do or watch stays (the agent.idle_exit_seconds default).
DEFAULT_IDLE_EXIT_SECONDS = 300.0
# The `provider_settings` entry that holds this project's settings.
SETTINGS_PROVIDER = "session-buddy"

SETTINGS_DIR_ENV = "ONEIRIC_SESSION_SETTINGS_DIR"
ONEIRIC_CONFIG_ENV = "ONEIRIC_CONFIG"
ONEIRIC_SELECTION_ENV = "ONEIRIC_ADAPTERS__SELECTIONS__SESSION_TRACKER"
SESSION_BUDDY_PATH_ENV = "SESSION_BUDDY_PATH"
ENV_PREFIX = "ONEIRIC_SESSION_"
# Oneiric's own variables that set a setting; the ONEIRIC_SESSION_* variables beat them.
ONEIRIC_ENV_SETTINGS = {ONEIRIC_SELECTION_ENV: "provider", SESSION_BUDDY_PATH_ENV: "session_buddy_path"}

# Top-level setting names (the model's fields; a test keeps both equal). Other
# ONEIRIC_SESSION_* variables (SETTINGS_DIR, DB) are not settings and are ignored.
SETTING_NAMES = frozenset(
    {
        "provider", "transport", "url", "server", "session_buddy_path", "retry", "breaker",
        "timeouts", "exit_wait_seconds", "spool", "agent", "limits", "token_env", "token_file",
        "report_cwd",
    }
)  # fmt: skip
# Settings whose environment values are JSON (lists, mappings, whole sections); a test keeps it honest.
JSON_SETTINGS = frozenset(
    {"server", "server.args", "server.env", "retry", "breaker", "timeouts", "spool", "agent", "limits"}
)


# A Record (common/record.py): the shell reads its settings here.
class Layer(Record):
    """One source's values, nested in the settings' own shape."""

    source: str
    values: dict[str, Any]


class Merged:
    """All layers merged: the values, the source of each leaf, and the files considered."""

    __slots__ = ("files", "settings_dir", "sources", "values")

    def __init__(self, settings_dir: Path) -> None:
        self.settings_dir = settings_dir
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.files: list[tuple[Path, bool]] = []

    def __repr__(self) -> str:
        return f"Merged(settings_dir={self.settings_dir!r}, values={self.values!r}, sources={self.sources!r})"

    def source_of(self, name: str) -> str:
        return nearest_source(self.sources, name)

    def selection(self) -> tuple[str, str]:
        """The selected provider and its source, checked without pydantic."""
        provider = self.values.get("provider", DEFAULT_PROVIDER)
        if not isinstance(provider, str) or not provider.strip():
            origin = describe(self.source_of("provider"))
            raise ConfigError(f"provider: expected a provider name, got {provider!r}; from {origin}")
        return provider.strip(), self.source_of("provider")


def nearest_source(known: Mapping[str, str], name: str) -> str:
    """The source of the dotted setting `name`, of a value set inside it, or of the nearest parent."""
    # An unknown section (a typo such as `retri:`) is known only through the leaves set inside it.
    inside = sorted(key for key in known if key.startswith(f"{name}."))
    if name not in known and inside:
        return known[inside[0]]
    while name:
        if name in known:
            return known[name]
        name = name.rpartition(".")[0]
    return "default"


def describe(source: str) -> str:
    """A source label for people: "file /x/adapters.yml", "environment variable X"."""
    kind, _, where = source.partition(":")
    return {"file": f"file {where}", "env": f"environment variable {where}"}.get(kind, source)


def read(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Merged:
    """Read and merge every layer of CONTRACT.md section 2, lowest precedence first."""
    env = os.environ if environ is None else environ
    merged = Merged(resolve_settings_dir(settings_dir, env))
    for layer in _layers(merged, env, overrides or {}):
        _merge(merged.values, merged.sources, layer.values, layer.source)
    return merged


# The settings directory of a shell whose working directory was deleted: one that can never exist
# (a path below a device), so every settings file in it reads as absent.
NO_SETTINGS_DIR = Path(os.devnull) / "settings"


def resolve_settings_dir(settings_dir: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """The argument, else $ONEIRIC_SESSION_SETTINGS_DIR, else ./settings (which may be absent)."""
    given = settings_dir if settings_dir is not None else environ.get(SETTINGS_DIR_ENV) or None
    if given is None:
        try:
            return Path.cwd() / "settings"
        except OSError:  # the working directory was deleted: there is no ./settings to read
            return NO_SETTINGS_DIR
    origin = "--settings" if settings_dir is not None else f"environment variable {SETTINGS_DIR_ENV}"
    path = given_path(os.fspath(given), f"settings directory (from {origin})")
    if not os.path.isdir(path):  # (False, not an error, for a path that cannot be searched or is too long)
        raise ConfigError(f"settings directory {path} does not exist or is not a directory (from {origin})")
    return path


# Why a path whose `~user` names no user of this system is refused, wherever it is given.
UNKNOWN_HOME = "names a home directory ('~') this system does not know"
# Names the bundled server's database (a variable, not a setting: `serve` and `sessions` read it too).
DB_ENV = "ONEIRIC_SESSION_DB"


def expand_home(value: str) -> str | None:
    """`value` with a leading `~` or `~user` expanded; None when it names the home of a user this
    system does not know. os.path's expansion, not pathlib's: only a leading `~` is one (`./~x`
    is a file named `~x`)."""
    expanded = os.path.expanduser(value)
    return None if value.startswith("~") and expanded == value else expanded


def given_path(value: str, what: str) -> Path:
    """`value` with its `~` expanded, made absolute; ConfigError naming `what` when it cannot be
    (expanding would raise into `status` or a shell's start). The reason comes first: a long value
    is cut short where the message is shown."""
    expanded = expand_home(value)
    if expanded is None:
        reason = UNKNOWN_HOME
    else:
        try:
            return Path(expanded).absolute()
        except OSError:  # relative, and the working directory was deleted
            reason = "is relative, and the working directory no longer exists"
    from oneiric_session.common.safetext import terminal_safe

    raise ConfigError(f"{what} {reason}: {terminal_safe(repr(value), _SHOWN_VALUE_CHARS)}")


# Of a path that cannot be used, the part a message shows (the whole is in the user's own settings).
_SHOWN_VALUE_CHARS = 200


def server_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """The bundled server's database: `$ONEIRIC_SESSION_DB`, else under the XDG data dir."""
    value = (os.environ if environ is None else environ).get(DB_ENV)
    if value:
        return given_path(value, f"environment variable {DB_ENV}")
    from oneiric_session.common.paths import data_dir  # (platformdirs: not on a shell's path)

    return data_dir() / "sessions.sqlite3"


def oneiric_files(directory: Path, environ: Mapping[str, str]) -> list[Path]:
    """Oneiric's own settings files, lowest precedence first (each may be absent)."""
    files = [directory / "oneiric.yaml", directory / "oneiric.yml", directory / "local.yaml"]
    # Oneiric 0.33 reads the user's files above the project's ($XDG_CONFIG_HOME, else ~/.config).
    files += [user / "config.yaml", user / "local.yaml"] if (user := oneiric_user_dir(environ)) else []
    config_file = environ.get(ONEIRIC_CONFIG_ENV)
    if config_file:
        # In Oneiric this variable names one file, never a directory.
        path = given_path(config_file, f"environment variable {ONEIRIC_CONFIG_ENV}")
        if os.path.isdir(path):
            raise ConfigError(
                f"environment variable {ONEIRIC_CONFIG_ENV} names a directory ({path}); it must name a file"
            )
        files.append(path)
    return files


def oneiric_user_dir(environ: Mapping[str, str]) -> Path | None:
    """Oneiric's per-user settings directory, `$XDG_CONFIG_HOME/oneiric` (else `$HOME/.config/oneiric`)."""
    base = environ.get("XDG_CONFIG_HOME") or (
        str(Path(environ["HOME"]) / ".config") if environ.get("HOME") else None
    )
    expanded = expand_home(base) if base else None  # (`./~x` is a directory named `~x`)
    try:
        return Path(expanded).absolute() / "oneiric" if expanded else None
    except OSError:  # relative in a deleted directory
        return None  # a directory nothing can be read from, as ./settings there


def adapters_files(directory: Path) -> list[Path]:
    """This project's settings files, lowest precedence first (each may be absent)."""
    return [directory / "adapters.yml", directory / "adapters.yaml"]


def settings_files(directory: Path, environ: Mapping[str, str]) -> list[Path]:
    """Every file `read` considers, in its order."""
    return oneiric_files(directory, environ) + adapters_files(directory)


def relevant_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables `read` consults and nothing else (so no token is among them), e.g. for cache keys."""
    names = {SETTINGS_DIR_ENV, ONEIRIC_CONFIG_ENV, *ONEIRIC_ENV_SETTINGS}
    return {var: value for var, value in environ.items() if var in names or _setting_parts(var)}


def _setting_parts(var: str) -> list[str] | None:
    """The setting path an ONEIRIC_SESSION_* variable sets, as written; None if it sets none."""
    if not var.startswith(ENV_PREFIX):
        return None
    parts = var[len(ENV_PREFIX) :].split("__")
    if parts[0].lower() not in SETTING_NAMES or not all(parts):
        return None
    return parts


def _layers(merged: Merged, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> Iterator[Layer]:
    directory = merged.settings_dir
    for path in oneiric_files(directory, environ):
        data = _read_optional(merged, path)
        if data is not None:
            section = _mapping(data.get("adapters"), path, "adapters")
            yield Layer(f"file:{path}", _from_oneiric_section(section, path, "adapters."))
    for path in adapters_files(directory):
        data = _read_optional(merged, path)
        if data is not None:
            yield Layer(f"file:{path}", _from_adapters_file(data, path))
    yield from _env_layers(environ)
    if overrides:
        yield Layer("argument", _expand_dotted(overrides))


def _read_optional(merged: Merged, path: Path) -> dict[str, Any] | None:
    # Anything there but a directory is read (a FIFO or a device is refused there, never waited on).
    exists = os.path.exists(path) and not os.path.isdir(path)
    merged.files.append((path, exists))
    return read_file(path) if exists else None


def _from_adapters_file(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """settings/adapters.yml in its three shapes: flat, Oneiric's `adapters:`, or that section bare."""
    if "adapters" in data:
        return _from_oneiric_section(_mapping(data["adapters"], path, "adapters"), path, "adapters.")
    if "selections" in data or "provider_settings" in data:
        return _from_oneiric_section(data, path, "")
    if CATEGORY not in data:  # flat {category: provider} for other categories only
        return {}
    return {"provider": _provider_name(data[CATEGORY], path, CATEGORY)}


def _from_oneiric_section(section: dict[str, Any], path: Path, prefix: str) -> dict[str, Any]:
    selections = _mapping(section.get("selections"), path, f"{prefix}selections")
    provider_settings = _mapping(section.get("provider_settings"), path, f"{prefix}provider_settings")
    values = dict(
        _mapping(
            provider_settings.get(SETTINGS_PROVIDER), path, f"{prefix}provider_settings.{SETTINGS_PROVIDER}"
        )
    )
    if CATEGORY in selections:
        values["provider"] = _provider_name(selections[CATEGORY], path, f"{prefix}selections.{CATEGORY}")
    return values


def _mapping(value: Any, path: Path, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a mapping, found {type(value).__name__}")
    return value


def _provider_name(value: Any, path: Path, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {key} must be a provider name, found {value!r}")
    return value


def env_var(name: str) -> str:
    """The ONEIRIC_SESSION_* variable that sets the dotted setting `name` (the inverse of `_env_layers`)."""
    parts = name.split(".")
    return ENV_PREFIX + "__".join([p.upper() for p in parts[:2]] + parts[2:])


def _env_layers(environ: Mapping[str, str]) -> Iterator[Layer]:
    """Oneiric's variables, then ONEIRIC_SESSION_* (sorted, so RETRY__ATTEMPTS beats RETRY)."""
    for var, name in ONEIRIC_ENV_SETTINGS.items():
        if environ.get(var):
            yield Layer(f"env:{var}", {name: environ[var]})
    for var in sorted(environ):
        parts = _setting_parts(var)
        if parts is None or not environ[var]:
            continue
        # Setting names are case-insensitive; deeper keys (names inside server.env) are kept as written.
        parts = [p.lower() for p in parts[:2]] + parts[2:]
        value: Any = environ[var]
        if ".".join(parts) in JSON_SETTINGS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{'.'.join(parts)}: expected JSON ({exc.msg} at character {exc.pos}); "
                    f"from environment variable {var}"
                ) from None
        yield Layer(f"env:{var}", _nest(parts, value))


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        _merge(values, {}, _nest(key.split("."), value), "argument")
    return values


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    for part in reversed(parts):
        value = {part: value}
    nested: dict[str, Any] = value  # parts is never empty
    return nested


def _merge(
    target: dict[str, Any], sources: dict[str, str], values: Mapping[str, Any], label: str, prefix: str = ""
) -> None:
    """Deep-merge `values` into `target`, recording `label` as the source of every leaf written."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            if not isinstance(target.get(key), dict):
                target[key] = {}
                _forget(sources, name)
            _merge(target[key], sources, value, label, f"{name}.")
        else:
            target[key] = value
            _forget(sources, name)
            sources[name] = label


def _forget(sources: dict[str, str], name: str) -> None:
    for key in [k for k in sources if k == name or k.startswith(f"{name}.")]:
        del sources[key]
