"""Where events go and how hard to try: one MCP server, reached over stdio or Streamable HTTP.

Shells with different settings share one spool; each spooled row names its
destination so the delivery agent keeps one connection per destination.
The token is never part of a destination (it is never written to disk).
This module is imported by the shell side: standard library only.
"""

from __future__ import annotations

import json
from typing import Literal, NamedTuple

from oneiric_session.digest import sha256_hex

TransportName = Literal["stdio", "http"]


# NamedTuples, not dataclasses: every shell imports this, and `dataclasses` alone costs a shell ~6 ms.
class Tuning(NamedTuple):
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


class Destination(NamedTuple):
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
        ident = {
            "transport": self.transport,
            "command": self.command,
            "args": list(self.args),
            "env": dict(self.env),
            "cwd": self.cwd,
            "url": self.url,
        }
        return sha256_hex(json.dumps(ident, sort_keys=True).encode())[:16]

    def describe(self) -> str:
        """A one-line human description (no environment values, no URL credentials: they are secrets)."""
        if self.transport == "http":
            return f"http {_without_credentials(self.url or '')}"
        return " ".join([self.command, *self.args])

    def to_json(self) -> str:
        data = self._asdict()
        data["args"] = list(self.args)
        data["env"] = dict(self.env)
        data["tuning"] = self.tuning._asdict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Destination:
        data = json.loads(text)
        known = Tuning._fields
        return cls(
            transport=data.get("transport", "stdio"),
            command=data.get("command", ""),
            args=tuple(data.get("args", ())),
            env=tuple(sorted(dict(data.get("env", {})).items())),
            cwd=data.get("cwd"),
            url=data.get("url"),
            tuning=Tuning(**{k: v for k, v in dict(data.get("tuning", {})).items() if k in known}),
        )


def _without_credentials(url: str) -> str:
    """`http://user:secret@host/mcp` -> `http://***@host/mcp`."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not sep or not at or "/" in userinfo:
        return url
    return f"{scheme}://***@{hostpart}"
