"""A client with scripted answers, in memory: the agent's side tested in-process on a fake clock
(as httpx ships its MockTransport). No process, no socket, no MCP; the tests with real servers
keep what only they can show (kill -9, timeouts, races).

`answer(tool, event)` is called for each call and returns the answer (a session id for
`track_session_start`, "ended" or "not_found" for `track_session_end`) or raises one of
`oneiric_session.errors`' types, as `SessionBuddyClient` would after one attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["ScriptedClient"]


class ScriptedCall(NamedTuple):
    tool: str
    event: dict[str, Any]
    at: float  # the client's clock when the call was made


class ScriptedClient:
    """Has what the agent uses of `SessionBuddyClient` (`agent.worker.Client`)."""

    def __init__(
        self,
        answer: Callable[[str, Mapping[str, Any]], str],
        *,
        clock: Callable[[], float] = lambda: 0.0,
        server_name: str | None = None,
    ) -> None:
        self._answer = answer
        self._clock = clock
        self.server_name = server_name
        self.calls: list[ScriptedCall] = []
        self.closed = False

    async def start_session(self, event: Mapping[str, Any]) -> str:
        return self._call("track_session_start", event)

    async def end_session(self, event: Mapping[str, Any]) -> str:
        return self._call("track_session_end", event)

    async def aclose(self) -> None:
        self.closed = True

    def _call(self, tool: str, event: Mapping[str, Any]) -> str:
        self.calls.append(ScriptedCall(tool, dict(event), self._clock()))
        return self._answer(tool, event)
