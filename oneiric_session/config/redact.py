"""What counts as a secret among setting values, and how it is shown (standard library only)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from oneiric_session.tracking.destination import is_secret_env

REDACTED = "<redacted>"


def redact(name: str, value: Any) -> Any:
    """`value` of the dotted setting `name`, with secrets replaced by <redacted>."""
    if name.startswith("server.env.") and is_secret_env(name.removeprefix("server.env.")):
        return REDACTED
    if name == "url" and isinstance(value, str):
        parts = urlsplit(value)
        userinfo, at, host = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
            return urlunsplit(parts._replace(netloc=netloc))
    return value
