"""Per-user file locations (XDG), in one place; and which errors say that nothing is at a path."""

from __future__ import annotations

import errno
from pathlib import Path

APP_NAME = "oneiric-session"


def state_dir() -> Path:
    """`$XDG_STATE_HOME/oneiric-session`: the spool and the agent's lock and socket."""
    import platformdirs  # (here: `nothing_there` is for the spool's code, standard library only)

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """`$XDG_DATA_HOME/oneiric-session`: the bundled server's database."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_spool_path() -> Path:
    return state_dir() / "spool.sqlite3"


def nothing_there(exc: OSError) -> bool:
    """Whether `exc`, raised looking at a path, means nothing is there: the path, or a directory on
    its way, does not exist, or the path is too long to name a file. Any other error (permission
    denied, ...) means something may be there that cannot be seen: never to be read as absent."""
    return isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno == errno.ENAMETOOLONG
