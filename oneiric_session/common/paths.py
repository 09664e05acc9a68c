"""Per-user file locations (XDG), in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

APP_NAME = "oneiric-session"


def state_dir() -> Path:
    """`$XDG_STATE_HOME/oneiric-session`: the spool and the agent's lock and socket."""
    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """`$XDG_DATA_HOME/oneiric-session`: the bundled server's database."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_spool_path() -> Path:
    return state_dir() / "spool.sqlite3"


# Names the bundled server's database (a variable, not a setting: `serve` and `sessions` read it too).
DB_ENV = "ONEIRIC_SESSION_DB"


def default_server_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """The bundled server's database: `$ONEIRIC_SESSION_DB`, else under the XDG data dir."""
    env = (os.environ if environ is None else environ).get(DB_ENV)
    if not env:
        return data_dir() / "sessions.sqlite3"
    expanded = os.path.expanduser(env)  # only a leading `~` (pathlib reads `./~x` as one too)
    if env.startswith("~") and expanded == env:  # `~user` of a user this system does not know
        from oneiric_session.errors import ConfigError

        raise ConfigError(
            f"environment variable {DB_ENV} names a home directory ('~') this system does not know: "
            f"{env!r:.200}"
        )
    return Path(expanded)
