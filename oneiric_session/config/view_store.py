"""The settings cache's write side: a view (or a bare selection) stored after a validation, and
the entries pruned. Loaded only at a miss, when the settings are validated anyway; a shell whose
settings are cached never loads it (`shell_view` is the read side).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oneiric_session.common.privacy import private_dir, write_private
from oneiric_session.config.shell_view import (
    CACHE_FORMAT,
    ShellView,
    cache_dir,
    cache_key,
    cached_view,
    entry_path,
    ours,
)

__all__ = ["MAX_ENTRIES", "load_shell_view", "prune", "store"]

# Distinct configurations remembered (settings dirs x environments); the oldest go first.
MAX_ENTRIES = 16


def load_shell_view(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ShellView:
    """The view from the cache, else from a full validation (then cached). Raises ConfigError."""
    cached, key = cached_view(settings_dir, overrides=overrides, environ=environ)
    if cached is not None:
        return cached
    prune()  # a miss: validated now, so older entries go (some a store never follows)
    from oneiric_session.config.loader import load_config

    env = os.environ if environ is None else environ
    view = ShellView.from_config(load_config(settings_dir, overrides=overrides, environ=env))
    store(view, key, settings_dir, overrides=overrides, environ=env)
    return view


def store(
    entry: ShellView | tuple[str, str],
    key: str | None,
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Remember under `key` a validated view, or for a provider that needs no settings (noop,
    memory) its selection, (provider, source): its next shell start then parses no settings file
    at all. Not when the inputs changed while they were validated (the entry may be of neither
    version). Never raises: the cache is an optimisation."""
    if isinstance(entry, ShellView) and entry.destination.secrets():
        # A secret server.env value is never stored at rest: such a configuration is validated at
        # each shell start (the view would otherwise hold only a reference the shell cannot resolve).
        return
    env = os.environ if environ is None else environ
    if key is None or cache_key(settings_dir, overrides=overrides, environ=env) != key:
        return  # inputs that cannot be cached, or a file or variable changed during validation
    # When it cannot be written, the next start validates again.
    with contextlib.suppress(OSError, TypeError, ValueError):
        directory = private_dir(cache_dir())  # each directory made private (0700), as the spool's are
        content = {"view": entry.to_json()} if isinstance(entry, ShellView) else {"selection": list(entry)}
        target = entry_path(key)
        write_private(target, json.dumps({"format": CACHE_FORMAT, "key": key, **content}, sort_keys=True))
        prune(directory, keep=target)


def prune(directory: Path | None = None, *, keep: Path | None = None) -> None:
    """Keep the newest MAX_ENTRIES entries; drop those of an older format (they may hold what this
    version keeps out) and temporary files a crashed writer left (a minute old). Only in a
    directory of ours, and only files of ours (`sudo` keeping HOME must not prune a user's).
    `directory`: the cache's (`cache_dir()`) unless given. Never raises: the cache is an optimisation."""
    with contextlib.suppress(Exception):
        _prune(cache_dir() if directory is None else directory, keep)


def _prune(directory: Path, keep: Path | None) -> None:
    try:
        if not ours(os.stat(directory)):
            return
        found = []
        for entry in directory.iterdir():
            st = os.lstat(entry)
            if stat.S_ISREG(st.st_mode) and ours(st):
                found.append((st.st_mtime, entry))
    except OSError:
        return
    entries = sorted(item for item in found if item[1].suffix == ".json")
    stale = [entry for mtime, entry in found if entry.suffix == ".tmp" and mtime < time.time() - 60]
    stale += [entry for _, entry in entries if _older_format(entry.name)]
    for entry in [entry for _, entry in entries[: max(0, len(entries) - MAX_ENTRIES)]] + stale:
        if entry != keep:
            with contextlib.suppress(OSError):
                entry.unlink()


def _older_format(name: str) -> bool:
    """Whether the entry file `name` is of an older format than this one's, by its name (never
    opened: a shell pays no read per entry): `<key>.json` before format 4, `<key>.v<N>.json` since."""
    stem, version = name.removesuffix(".json"), None
    _, dot_v, number = stem.rpartition(".v")
    if dot_v and number.isascii() and number.isdigit():
        version = int(number)
    return version is None or version < CACHE_FORMAT
