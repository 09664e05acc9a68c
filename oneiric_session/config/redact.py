"""What counts as a secret among setting values, and how it is shown (standard library only)."""

from __future__ import annotations

from typing import Any

from oneiric_session.tracking.destination_secrets import is_secret_env, replace_url_secrets

REDACTED = "<redacted>"


def redact(name: str, value: Any) -> Any:
    """`value` of the dotted setting `name`, with secrets replaced by <redacted>."""
    if name.startswith("server.env.") and is_secret_env(name.removeprefix("server.env.")):
        return REDACTED
    if name == "url" and isinstance(value, str):
        return replace_url_secrets(value, REDACTED)  # (the same object when it has none)
    return value
