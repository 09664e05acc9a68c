"""Reading one settings file, or the token file: bounded in size, never waiting, and YAML without
alias bombs.

Run by every side that reads settings: the shell (`sources.read`, and `shell_view` hashing the
files for its cache key), the agent and the command line. Standard library only at import;
PyYAML is imported when a YAML file is parsed, so a shell without a settings file pays nothing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oneiric_session.errors import ConfigError

# What one settings file may hold: settings are a few KiB; a bigger file is refused, never parsed.
MAX_SETTINGS_FILE_BYTES = 1024 * 1024
# What YAML may expand to: values (mapping entries, list items, scalars) once aliases and merge
# keys are followed. A real settings file has a few hundred; an alias bomb has billions.
MAX_SETTINGS_NODES = 100_000


def read_bounded(path: Path, max_bytes: int = MAX_SETTINGS_FILE_BYTES, what: str = "settings file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; ConfigError otherwise, at once.

    Opened non-blocking, so a FIFO (a secret manager's pipe, a stale `<(...)`) or a device is
    refused by its type instead of waiting for a writer; the size is checked before reading.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise ConfigError(f"{path}: the {what} is {kind}; it must be a regular file")
        if st.st_size > max_bytes:
            raise ConfigError(f"{path}: the {what} is {st.st_size} bytes, more than the {max_bytes} allowed")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > max_bytes:  # it grew while being read
                raise ConfigError(f"{path}: the {what} is more than the {max_bytes} bytes allowed")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_file(path: Path) -> dict[str, Any]:
    """A settings file's top-level mapping, parsed by its suffix (.json, .toml, else YAML); {} if empty."""
    try:
        text = read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
    elif path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    else:
        data = _parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml  # only when a settings file exists: a shell without one pays nothing

    try:
        data = yaml.load(text, Loader=_bounded_loader(yaml))  # a SafeLoader subclass
        _check_expansion(data, path)
        return data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # problem/context only: the snippet of the file that PyYAML appends is not repeated
        reason = "; ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{path}{where}: invalid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _bounded_loader(yaml: Any) -> Any:
    """A SafeLoader that stops merge keys from expanding past MAX_SETTINGS_NODES (a merge-key bomb)."""

    from yaml import SafeLoader  # (the caller's `yaml`, already imported: typed, unlike the parameter)

    class BoundedLoader(SafeLoader):
        budget = MAX_SETTINGS_NODES

        def flatten_mapping(self, node: Any) -> None:
            super().flatten_mapping(node)
            self.budget -= len(node.value)
            if self.budget < 0:
                raise yaml.YAMLError(f"merge keys expand to more than {MAX_SETTINGS_NODES} entries")

    return BoundedLoader


def _check_expansion(data: Any, path: Path) -> None:
    """ConfigError when `data`, aliases followed, holds more than MAX_SETTINGS_NODES values."""
    budget = MAX_SETTINGS_NODES
    stack = [data]
    while stack:
        value = stack.pop()
        budget -= 1
        if budget < 0:
            raise ConfigError(
                f"{path}: invalid YAML: aliases expand to more than {MAX_SETTINGS_NODES} values"
            )
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path setting as a message names it: pathlib shortens `./~x` to `~x`, which would read as
    the home of user `x` (the setting's `~` was expanded when it was validated: config.models)."""
    text = os.fspath(path)
    return f"./{text}" if text.startswith("~") else text


# A token is a few hundred bytes (a JWT); a bigger token_file is refused, not read.
_MAX_TOKEN_BYTES = 64 * 1024


def read_token(
    environ: Mapping[str, str], token_env: str, token_file: Path | None, origin: str
) -> str | None:
    """The token from the variable `token_env`, else `token_file` (mode 0600, named in messages
    with `origin`, where the setting came from); ConfigError if unreadable. The loader's
    `LoadedConfig` and the shell's cached `ShellView` both call it; a token is never stored."""
    value = environ.get(token_env)
    if value:
        return value
    if token_file is None:
        return None
    path = token_file  # (its `~` expanded when it was validated: config.models)
    shown = shown_path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise ConfigError(f"token_file {shown} is {kind}; it must be a regular file; from {origin}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"token_file {shown} must be readable by its owner only (chmod 600), "
                f"its mode is {stat.S_IMODE(mode):o}; from {origin}"
            )
        data = read_bounded(path, _MAX_TOKEN_BYTES, "token_file")
        return data.decode("utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        reason = type(exc).__name__
        raise ConfigError(f"token_file {shown}: cannot read it ({reason}); from {origin}") from None
