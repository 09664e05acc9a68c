"""What counts as a secret among setting values, and how it is shown (standard library only)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
# Names in server.env that usually hold credentials for the server process.
_SECRET_NAME = re.compile(r"token|secret|passw|key|credential|auth|cookie", re.IGNORECASE)


def redact(name: str, value: Any) -> Any:
    """`value` of the dotted setting `name`, with secrets replaced by <redacted>."""
    if name.startswith("server.env.") and _SECRET_NAME.search(name.removeprefix("server.env.")):
        return REDACTED
    if name == "url" and isinstance(value, str):
        parts = urlsplit(value)
        userinfo, at, host = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
            return urlunsplit(parts._replace(netloc=netloc))
    return value
