"""What the agent, the transport and the command line ask of a url beyond what a shell needs
(standard library only; not on a shell's path): which urls are refused where they are given, the
credentials as httpx sends them, and how the url's secrets are named in messages and found in text.
"""

from __future__ import annotations

from collections.abc import Mapping

from oneiric_session.common.scrub import without_secrets
from oneiric_session.tracking.destination import SECRET_REFERENCE
from oneiric_session.tracking.destination_secrets import (
    URL_PASSWORD,
    URL_QUERY,
    authority_end,
    port_not_a_number,
    unclear_url,
)

__all__ = ["secret_named", "unusable_url", "url_problem", "without_destination_secrets"]


# Why a url is refused where it is given (settings, `--url`): never naming it, it may hold a password.
UNCLEAR_URL = (
    "an '@' after its host, or a port that is not a number, is what a password holding a raw '/', "
    "'?', '#' or '@' becomes: percent-encode them in a password (%2F, %3F, %23, %40), and an '@' "
    "in the path or query (%40)"
)


# Why the HTTP client cannot use a url as written (never naming it).
_CONTROL = "it holds a control character (a line break, a tab); remove it"
_NO_PORT = "its port is not a number"
_PORT_RANGE = "its port is over 65535"
_NOT_AN_ADDRESS = "its host is written as an IP address that is not one"
_KEPT_WITHOUT = (
    "an older version's url that could hide a password, kept without it (never sent); give the url "
    "again as the settings take it"
)
_MAY_HIDE = "an older version's url whose host cannot be told from a password (never sent)"


def url_problem(url: str) -> str | None:
    """Why `url` is refused where it is given (settings, `--url`), never naming it (it may hold a
    password); None when it is clear and the HTTP client can use it."""
    if _has_control(url):
        return _CONTROL
    return UNCLEAR_URL if unclear_url(url) else unusable_url(url)


def unusable_url(url: str) -> str | None:
    """Why the HTTP client (httpx) cannot use `url` as written, else None: a control character, a
    port that is not a number or over 65535, an IPv4- or IPv6-style host that is no address. The
    transport refuses such a url (an older version's row) before httpx names any part of it, and an
    unclear one (`unclear_url`), which may hide a password it would send to the wrong host."""
    if SECRET_REFERENCE in url:
        return _KEPT_WITHOUT
    if _has_control(url):
        return _CONTROL
    if port_not_a_number(url):
        return _NO_PORT
    if unclear_url(url):
        return _MAY_HIDE
    _, _, rest = url.partition("://")
    authority = rest[: authority_end(rest)].rpartition("@")[2]
    if authority.startswith("["):
        literal, _, after = authority[1:].partition("]")
        port = after.removeprefix(":")
        if (after and port == after) or not _an_address(literal.partition("%")[0], 6):
            return _NOT_AN_ADDRESS  # (text after the ']' that is no port; a zone id after '%' is fine)
    else:
        host, _, port = authority.partition(":")
        # httpx reads a host of four dot-separated numbers as an IPv4 address, and refuses one that is not.
        parts = host.split(".")
        if len(parts) == 4 and all(p.isascii() and p.isdigit() for p in parts) and not _an_address(host, 4):
            return _NOT_AN_ADDRESS
    port = port.strip()
    if port and not (port.isascii() and port.isdigit()):
        return _NO_PORT
    return _PORT_RANGE if port and int(port) > 65535 else None


def _has_control(url: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in url)


def _an_address(text: str, version: int) -> bool:
    import ipaddress  # (only where a url is given or delivered: never on a shell's path)

    try:
        (ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(text)
    except ValueError:
        return False
    return True


def without_destination_secrets(text: str | None, secrets: Mapping[str, str]) -> str | None:
    """`text` without any of a destination's `secrets` (`Destination.secrets()`), its url's query
    secrets also cut by their parameters' names (`scrub.without_secrets`)."""
    query = [
        (name.removeprefix(URL_QUERY).partition(":")[2], value)
        for name, value in secrets.items()
        if name.startswith(URL_QUERY)
    ]
    return without_secrets(text, secrets.values(), query)


def secret_named(name: str) -> str:
    """How a message names one of `Destination.secrets()`."""
    if name == URL_PASSWORD:
        return "the url's password"
    if name.startswith(URL_QUERY):
        return f"the url's {name.removeprefix(URL_QUERY).partition(':')[2]}"
    return f"server.env {name}"
