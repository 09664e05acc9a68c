"""What the agent, the transport and the command line ask of a url beyond what a shell needs
(standard library only; not on a shell's path): which urls are refused where they are given, the
credentials as httpx sends them, and how the url's secrets are named in messages and found in text.
"""

from __future__ import annotations

from collections.abc import Iterable

from oneiric_session.tracking.destination import URL_PASSWORD, URL_QUERY, port_not_a_number, userinfo_parts

__all__ = ["UNCLEAR_URL", "query_secret_names", "secret_named", "unclear_url", "url_credentials"]


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
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    while "[" in authority and "]" in authority.partition("[")[2]:
        head, _, tail = authority.partition("[")
        authority = head + tail.partition("]")[2]
    return bool(sep) and "@" in rest[end:] and ":" in authority


def url_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) of `scheme://user:password@host/...`, as written (percent-encoded), or None."""
    parts = userinfo_parts(url)
    if parts is None or ":" not in parts[1]:
        return None
    user, _, password = parts[1].partition(":")
    return user, password


def query_secret_names(secrets: Iterable[str]) -> list[str]:
    """The names of the url's query parameters among `secrets`' names (`Destination.secrets()`)."""
    return [name.removeprefix(URL_QUERY).partition(":")[2] for name in secrets if name.startswith(URL_QUERY)]


def secret_named(name: str) -> str:
    """How a message names one of `Destination.secrets()`."""
    if name == URL_PASSWORD:
        return "the url's password"
    if name.startswith(URL_QUERY):
        return f"the url's {name.removeprefix(URL_QUERY).partition(':')[2]}"
    return f"server.env {name}"
