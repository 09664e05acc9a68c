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
A password in `url` (`http://user:password@host/mcp`) and its query values named like secrets are
more such secrets. Which values are secrets, and where they are in a url: `destination_secrets`,
loaded only for a destination with a server.env or a url. This module is imported by the shell
side: standard library only.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

from oneiric_session.common.digest import sha256_hex
from oneiric_session.common.record import Record

TransportName = Literal["stdio", "http"]

# What is stored for a secret server.env value: a reference to "the value a shell of these
# settings brings", never the value (a NUL cannot be in a real environment value).
SECRET_REFERENCE = "\x00oneiric-session:secret-in-memory-only"


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
        if self.transport != "http":
            return " ".join([self.command, *self.args])
        from oneiric_session.tracking.destination_secrets import shown_url  # (no stdio shell loads it)

        return f"http {shown_url(self.url or '')}"

    def _env_at_rest(self) -> dict[str, str]:
        if not self.env:
            return {}
        from oneiric_session.tracking.destination_secrets import is_secret_env

        return {name: SECRET_REFERENCE if is_secret_env(name) else value for name, value in self.env}

    def _url_at_rest(self) -> str | None:
        if self.url is None:
            return None
        from oneiric_session.tracking.destination_secrets import url_at_rest

        return url_at_rest(self.url, SECRET_REFERENCE)

    def _url_secrets(self) -> dict[str, str]:
        if self.url is None:
            return {}
        from oneiric_session.tracking.destination_secrets import url_secrets

        return url_secrets(self.url)

    def secrets(self) -> dict[str, str]:
        """The secret server.env values (names `status` redacts), the url's password and its query
        values named like secrets, which are never written to disk."""
        if not self.env and self.url is None:
            return {}
        from oneiric_session.tracking.destination_secrets import is_secret_env

        found = {n: v for n, v in self.env if is_secret_env(n) and v != SECRET_REFERENCE}
        found.update((n, v) for n, v in self._url_secrets().items() if v != SECRET_REFERENCE)
        return found

    def missing_secrets(self) -> list[str]:
        """Names whose value is only a reference (read back from disk and not filled in yet)."""
        missing = [name for name, value in self.env if value == SECRET_REFERENCE]
        return missing + [n for n, v in self._url_secrets().items() if v == SECRET_REFERENCE]

    def with_secrets(self, secrets: dict[str, str] | None) -> Destination:
        """This destination with its references replaced by `secrets` (those it has)."""
        if not secrets or not self.missing_secrets():
            return self
        env = tuple((n, secrets.get(n, v) if v == SECRET_REFERENCE else v) for n, v in self.env)
        url = self.url
        if url is not None:
            from oneiric_session.tracking.destination_secrets import with_url_secrets

            found = self._url_secrets()
            url = with_url_secrets(
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
