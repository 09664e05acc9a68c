"""What the agent, the transport and the command line ask of a url beyond what a shell needs
(standard library only; not on a shell's path): which urls are refused where they are given, the
credentials as httpx sends them, and how the url's secrets are named in messages and found in text.
"""

from __future__ import annotations

from collections.abc import Mapping

from oneiric_session.common.scrub import without_secrets
from oneiric_session.tracking.destination_secrets import (
    URL_PASSWORD,
    URL_QUERY,
    authority_end,
    port_not_a_number,
)

__all__ = ["UNCLEAR_URL", "secret_named", "unclear_url", "without_destination_secrets"]


# Why a url is refused where it is given (settings, `--url`): never naming it, it may hold a password.
UNCLEAR_URL = (
    "an '@' after its host, or a port that is not a number, is what a password holding a raw '/', "
    "'?', '#' or '@' becomes: percent-encode them in a password (%2F, %3F, %23, %40), and an '@' "
    "in the path or query (%40)"
)


def unclear_url(url: str) -> bool:
    """Whether `url` is refused where it is given (`UNCLEAR_URL`): its port, as RFC 3986 (and
    httpx) read it, is not a number, or an `@` follows its host while its authority holds a `:`.
    Read as RFC 3986 reads them, `http://alice:pass/word@host` is host `alice` with port `pass`,
    and `http://alice:p@ss/word@host` the host `ss`: their passwords would be shown as a host or
    a path. (`host:8080/users/@me` is refused too: it cannot be told from the second.)"""
    return port_not_a_number(url) or _at_after_host(url)


def _at_after_host(url: str) -> bool:
    """An `@` after the authority while the authority holds a `:` (outside an IPv6 literal)."""
    _, sep, rest = url.partition("://")
    end = authority_end(rest)
    authority = rest[:end]
    while "[" in authority and "]" in authority.partition("[")[2]:
        head, _, tail = authority.partition("[")
        authority = head + tail.partition("]")[2]
    return bool(sep) and "@" in rest[end:] and ":" in authority


def without_destination_secrets(text: str | None, secrets: Mapping[str, str]) -> str | None:
    """`text` without any of a destination's `secrets` (`Destination.secrets()`), its url's query
    secrets also cut by their parameters' names (`scrub.without_secrets`)."""
    names = [name.removeprefix(URL_QUERY).partition(":")[2] for name in secrets if name.startswith(URL_QUERY)]
    return without_secrets(text, secrets.values(), names)


def secret_named(name: str) -> str:
    """How a message names one of `Destination.secrets()`."""
    if name == URL_PASSWORD:
        return "the url's password"
    if name.startswith(URL_QUERY):
        return f"the url's {name.removeprefix(URL_QUERY).partition(':')[2]}"
    return f"server.env {name}"
