"""Where events go and how hard to try: one MCP server, reached over stdio or Streamable HTTP.

Shells with different settings share one spool; each spooled row names its
destination so the delivery agent keeps one connection per destination.
The token is never part of a destination (it is never written to disk).

`server.env` values whose names `status` redacts (a server's secret, `SESSION_BUDDY_SECRET`)
are not written to disk either: `to_json` (the spool's destinations table, the config cache)
keeps the name with `SECRET_REFERENCE` instead of the value, and `key` is computed the same
way, so a destination read back from disk has the same key as the one a shell configured. The
values travel like tokens, in memory only (`secrets()`, the wake-up, the spawned agent's
hand-off pipe), and the agent puts them back (`with_secrets`) before it launches the server.
A password in `url` (`http://user:password@host/mcp`) is one more such secret, under the name
`URL_PASSWORD`. This module is imported by the shell side: standard library only.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

from oneiric_session.common.digest import sha256_hex
from oneiric_session.common.record import Record

TransportName = Literal["stdio", "http"]

# Names in server.env that usually hold credentials for the server process (`status` redacts them):
# those containing one of these words, in any case. (Words, not a regular expression: compiling one
# costs a shell 0.25 ms before its prompt.)
_SECRET_WORDS = ("token", "secret", "passw", "key", "credential", "auth", "cookie")
# What is stored for a secret server.env value: a reference to "the value a shell of these
# settings brings", never the value (a NUL cannot be in a real environment value).
SECRET_REFERENCE = "\x00oneiric-session:secret-in-memory-only"
# The name a password in `url` goes by among the secrets (no environment variable has a NUL).
URL_PASSWORD = "\x00url-password"
# The names of the values of the url's query parameters named like secrets (`?access_token=...`),
# among the secrets: this prefix and the parameter's name.
URL_QUERY = "\x00url-query:"


def is_secret_env(name: str) -> bool:
    """True for a server.env variable name that holds a secret (redacted, never stored on disk)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# Records (common/record.py): every shell imports this.
class Tuning(Record):
    """Retry, breaker and timeout figures for one destination (defaults fit the real Session-Buddy)."""

    attempts: int = 3
    wait_min_seconds: float = 0.5
    wait_max_seconds: float = 30.0
    multiplier: float = 2.0
    breaker_threshold: int = 5
    breaker_reset_seconds: float = 60.0
    # The real server needs ~2.5 s to start and 5-7 s for its first call.
    connect_seconds: float = 20.0
    call_seconds: float = 30.0
    # Calls in flight at once; 0: chosen by the agent from the server it reached (see `pipeline`).
    window: int = 0


class Destination(Record):
    """How to reach one server. `key` identifies it; `tuning` travels along but is not part of the key."""

    transport: TransportName = "stdio"
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str | None = None
    tuning: Tuning = Tuning()

    @property
    def key(self) -> str:
        """A short stable identifier, equal for equal launch lines or URLs."""
        return _key(self)

    def describe(self) -> str:
        """A one-line human description (no environment values, no URL credentials: they are secrets)."""
        if self.transport == "http" and port_not_a_number(self.url or ""):  # an older version's row:
            scheme, _, rest = (self.url or "").partition("://")  # its "port" may be a password
            host = rest.rpartition("@")[2]
            host = host[: authority_end(host)]
            return f"http {scheme}://***@{host}" if "@" in rest else "http (a url not shown)"
        if self.transport == "http":
            return f"http {_without_credentials(replace_url_secrets(self.url or '', '***'))}"
        return " ".join([self.command, *self.args])

    def _env_at_rest(self) -> dict[str, str]:
        return {name: SECRET_REFERENCE if is_secret_env(name) else value for name, value in self.env}

    def _url_at_rest(self) -> str | None:
        if self.url is not None and port_not_a_number(self.url):  # an older version's, never deliverable:
            return f"{self.url.partition('://')[0]}://{SECRET_REFERENCE}"  # its "port" may be a password
        return None if self.url is None else replace_url_secrets(self.url, SECRET_REFERENCE)

    def secrets(self) -> dict[str, str]:
        """The secret server.env values (names `status` redacts), the url's password and its query
        values named like secrets, which are never written to disk."""
        found = {n: v for n, v in self.env if is_secret_env(n) and v != SECRET_REFERENCE}
        found.update((n, v) for n, v in url_secrets(self.url or "").items() if v != SECRET_REFERENCE)
        return found

    def missing_secrets(self) -> list[str]:
        """Names whose value is only a reference (read back from disk and not filled in yet)."""
        missing = [name for name, value in self.env if value == SECRET_REFERENCE]
        return missing + [n for n, v in url_secrets(self.url or "").items() if v == SECRET_REFERENCE]

    def with_secrets(self, secrets: dict[str, str] | None) -> Destination:
        """This destination with its references replaced by `secrets` (those it has)."""
        if not secrets or not self.missing_secrets():
            return self
        env = tuple((n, secrets.get(n, v) if v == SECRET_REFERENCE else v) for n, v in self.env)
        url = self.url
        if url is not None:
            found = url_secrets(url)
            url = _with_url_secrets(
                url, {n: secrets.get(n, v) if v == SECRET_REFERENCE else v for n, v in found.items()}
            )
        return self._replace(env=env, url=url)

    def to_json(self) -> str:
        """The form written to disk: secret server.env values replaced by `SECRET_REFERENCE`."""
        data = self._asdict()
        data["args"] = list(self.args)
        data["env"] = self._env_at_rest()
        data["url"] = self._url_at_rest()
        data["tuning"] = self.tuning._asdict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Destination:
        """`to_json`'s text read back; ValueError for anything it would not have written (a
        destination read from a file another program may have edited is a launch line)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a destination is a JSON object")
        args, env, tuning = data.get("args", []), data.get("env", {}), data.get("tuning", {})
        if not (
            data.get("transport", "stdio") in ("stdio", "http")
            and isinstance(data.get("command", ""), str)
            and all(isinstance(v, str | None) for v in (data.get("cwd"), data.get("url")))
            and isinstance(args, list)
            and all(isinstance(a, str) for a in args)
            and isinstance(env, dict)
            and all(isinstance(v, str) for v in env.values())
            and isinstance(tuning, dict)
            and all(_a_figure(tuning.get(k, d), d) for k, d in Tuning._field_defaults.items())
        ):
            raise ValueError("not a destination this version wrote")
        return cls(
            transport=data.get("transport", "stdio"),
            command=data.get("command", ""),
            args=tuple(args),
            env=tuple(sorted(env.items())),
            cwd=data.get("cwd"),
            url=data.get("url"),
            tuning=Tuning(**{k: v for k, v in tuning.items() if k in Tuning._fields}),
        )


def _a_figure(value: object, default: int | float) -> bool:
    """A tuning figure: of its default's type (an int where that is one; never a bool), finite,
    not negative, and of a size a setting can have."""
    kind = int if isinstance(default, int) else int | float
    return isinstance(value, kind) and not isinstance(value, bool) and 0 <= value < 2**53


@functools.lru_cache(maxsize=64)
def _key(destination: Destination) -> str:
    """`Destination.key`, worked out once per destination (the agent asks it for every row)."""
    ident = {
        "transport": destination.transport,
        "command": destination.command,
        "args": list(destination.args),
        "env": destination._env_at_rest(),
        "cwd": destination.cwd,
        "url": destination._url_at_rest(),
    }
    return sha256_hex(json.dumps(ident, sort_keys=True).encode())[:16]


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
    port = host.partition(":")[2].strip()
    return bool(sep) and ":" in host and port != "" and not (port.isascii() and port.isdigit())


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


def _with_url_secrets(url: str, values: dict[str, str]) -> str:
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
    return _with_url_secrets(url, dict.fromkeys(found, value)) if found else url


def _without_credentials(url: str) -> str:
    """`http://user:secret@host/mcp` -> `http://***@host/mcp`."""
    parts = userinfo_parts(url)
    return url if parts is None else f"{parts[0]}***{parts[2]}"
