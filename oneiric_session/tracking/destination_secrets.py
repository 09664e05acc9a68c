"""Which of a destination's values are secrets: its server.env values named like secrets, its
url's password and its url's query values named like secrets; where those are in a url, as
RFC 3986 (and httpx) read it, and the url with them replaced.

`Destination` imports it only when it has a server.env or a url: a shell of a stdio destination
without either (the bundled server's, by default) never loads it. Standard library only.
"""

from __future__ import annotations

# Names in server.env that usually hold credentials for the server process (`status` redacts them):
# those containing one of these words, in any case. (Words, not a regular expression: compiling one
# costs a shell 0.25 ms before its prompt.)
_SECRET_WORDS = ("token", "secret", "passw", "key", "credential", "auth", "cookie")


def is_secret_env(name: str) -> bool:
    """True for a server.env variable name that holds a secret (redacted, never stored on disk)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# The name a password in `url` goes by among the secrets (no environment variable has a NUL).
URL_PASSWORD = "\x00url-password"
# The names of the values of the url's query parameters named like secrets (`?access_token=...`),
# among the secrets: this prefix and the parameter's name.
URL_QUERY = "\x00url-query:"


def authority_end(rest: str) -> int:
    """Where the authority of `rest` (a url after its `://`) ends: at its first `/`, `?` or `#`,
    as RFC 3986 (and httpx) read it."""
    return min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))


def userinfo_parts(url: str) -> tuple[str, str, str] | None:
    """(`scheme://`, userinfo, `@host...`) of a URL naming a user, else None. The userinfo ends at
    the authority's last `@`, as RFC 3986 (and httpx) read it: a password may hold a raw `@`."""
    scheme, sep, rest = url.partition("://")
    end = authority_end(rest)
    userinfo, at, host = rest[:end].rpartition("@")
    if not sep or not at:
        return None
    return scheme + sep, userinfo, at + host + rest[end:]


def port_not_a_number(url: str) -> bool:
    """Whether `url`'s port, as RFC 3986 (and httpx) read it, is not a number (httpx refuses it)."""
    _, sep, rest = url.partition("://")
    end = authority_end(rest)
    host = rest[:end].rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal: its colons are no port
        host = host.partition("]")[2]
    port = host.partition(":")[2].strip()  # (as httpx's int() reads it; control characters: url_rules)
    return bool(sep) and ":" in host and port != "" and not (port.isascii() and port.isdigit())


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


def url_at_rest(url: str, reference: str) -> str:
    """`url` as it is written to disk: each secret replaced by `reference`; an unclear one
    (`unclear_url`: an older version's row, which settings refuse), which may hide a password
    wherever RFC 3986 reads its host, path or query (`alice:2024/tail@host`, `alice:2024?tail@host`:
    host `alice`), without anything after its scheme but `reference`: never stored, nor sent."""
    if unclear_url(url):
        return f"{url.partition('://')[0]}://{reference}"
    return replace_url_secrets(url, reference)


def shown_url(url: str) -> str:
    """`url` as messages show it: without its secrets and its user's name. An unclear url (an older
    version's row: settings refuse them) not at all: any part of it may be a password's (a raw `@`,
    `/`, `?` or `#` in a password leaves no part that reads as its host for sure)."""
    if unclear_url(url):
        return "(a url not shown)"
    return without_credentials(replace_url_secrets(url, "***"))


def url_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) of `scheme://user:password@host/...`, as written (percent-encoded), or None."""
    parts = userinfo_parts(url)
    if parts is None or ":" not in parts[1]:
        return None
    user, _, password = parts[1].partition(":")
    return user, password


def _url_password(url: str) -> str | None:
    """The password in `scheme://user:password@host/...` (as written, percent-encoded), or None."""
    credentials = url_credentials(url)
    return None if credentials is None else credentials[1]


def replace_url_password(url: str, password: str) -> str:
    """`url` with its password, if it has one, replaced by `password` (else `url` itself)."""
    parts = userinfo_parts(url)
    if parts is None or ":" not in parts[1]:
        return url
    head, userinfo, tail = parts
    return f"{head}{userinfo.partition(':')[0]}:{password}{tail}"


def _query_span(url: str) -> tuple[int, int]:
    """Where the query of `url` is (after its `?`, up to its `#`); empty where it has none."""
    start = url.find("?")
    if start < 0:
        return len(url), len(url)
    end = url.find("#", start)
    return start + 1, len(url) if end < 0 else end


def _query_secrets(query: str) -> list[str | None]:
    """For each `&`-separated pair of `query`, its name among the secrets (`URL_QUERY`, the pair's
    position, `:`, the parameter's name as written) when its name reads as a secret's once
    percent-decoded, as a server reads it; else None."""
    names: list[str | None] = []
    for index, pair in enumerate(query.split("&")):
        name, equals, _ = pair.partition("=")
        if "%" in name or "+" in name:
            from urllib.parse import unquote_plus  # (rare: no shell pays for it otherwise)

            decoded = unquote_plus(name)
        else:
            decoded = name
        names.append(f"{URL_QUERY}{index}:{name}" if equals and is_secret_env(decoded) else None)
    return names


def url_secrets(url: str) -> dict[str, str]:
    """The secrets in `url`, by name: its password (`URL_PASSWORD`) and the values of its query
    parameters named like secrets (`_query_secrets`), as written (percent-encoded)."""
    found = {}
    password = _url_password(url)
    if password is not None:
        found[URL_PASSWORD] = password
    start, end = _query_span(url)
    pairs = url[start:end].split("&")
    for pair, secret in zip(pairs, _query_secrets(url[start:end]), strict=True):
        if secret is not None:
            found[secret] = pair.partition("=")[2]
    return found


def with_url_secrets(url: str, values: dict[str, str]) -> str:
    """`url` with the secrets `url_secrets` names replaced by `values` (those it has)."""
    if URL_PASSWORD in values:
        url = replace_url_password(url, values[URL_PASSWORD])
    start, end = _query_span(url)
    if start == end:
        return url
    query = url[start:end]
    pairs = [
        pair if secret is None or secret not in values else f"{pair.partition('=')[0]}={values[secret]}"
        for pair, secret in zip(query.split("&"), _query_secrets(query), strict=True)
    ]
    return url[:start] + "&".join(pairs) + url[end:]


def replace_url_secrets(url: str, value: str) -> str:
    """`url` with every secret in it (its password, its query values named like secrets) replaced by
    `value` (else `url` itself): what is written to disk, shown or logged of it."""
    found = url_secrets(url)
    return with_url_secrets(url, dict.fromkeys(found, value)) if found else url


def without_credentials(url: str) -> str:
    """`http://user:secret@host/mcp` -> `http://***@host/mcp`."""
    parts = userinfo_parts(url)
    return url if parts is None else f"{parts[0]}***{parts[2]}"
