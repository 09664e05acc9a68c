"""Reading the server token named by the settings (standard library only).

Both the validated settings (`loader.LoadedConfig.token`) and the shell's cached view
(`shell_view.ShellView.token`) read it here, at send time: it is never stored or shown.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

from oneiric_session.config import sources
from oneiric_session.errors import ConfigError

__all__ = ["read_token"]


def read_token(
    environ: Mapping[str, str], token_env: str, token_file: Path | None, token_file_source: str
) -> str | None:
    """The token from the variable `token_env`, else `token_file` (mode 0600); ConfigError if unreadable."""
    value = environ.get(token_env)
    if value:
        return value
    if token_file is None:
        return None
    path = token_file.expanduser()
    origin = sources.describe(token_file_source)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"token_file {path} must be readable by its owner only (chmod 600), "
                f"its mode is {stat.S_IMODE(mode):o}; from {origin}"
            )
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        reason = type(exc).__name__
        raise ConfigError(f"token_file {path}: cannot read it ({reason}); from {origin}") from None
