"""SessionBuddyClient: deliver start/end events to one server, one attempt per call, reconnecting.

Retrying, back-off and the breaker are the caller's (`resilience.RetryPolicy`, owned by the
agent's destination worker); the one resend here is the protocol's: an HTTP server that
forgot our session never ran the call, which then goes once more on a new session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from oneiric_session.errors import RejectedError, ServerUnavailableError, TransientDeliveryError
from oneiric_session.tracking.destination import Destination
from oneiric_session.transport.answers import read_end_answer, read_start_answer
from oneiric_session.transport.connection import Connection

__all__ = ["SessionBuddyClient"]


class SessionBuddyClient:
    """Keeps one MCP session to `destination` for all calls and reconnects after a failure.

    Every method raises `oneiric_session.errors` types only: RejectedError /
    AuthenticationError (permanent), TransientDeliveryError subclasses (worth
    another attempt). Use it from one event loop.
    """

    def __init__(self, destination: Destination, *, token: Callable[[], str | None] = lambda: None) -> None:
        self.destination = destination
        self._token = token
        self._connection: Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while a session is open and its server has not been seen to exit."""
        return self._connection is not None and self._connection.alive

    @property
    def server_name(self) -> str | None:
        """The name the connected server gave in the MCP handshake (None while not connected)."""
        return self._connection.server_name if self.connected and self._connection is not None else None

    @property
    def server_pid(self) -> int | None:
        """The current stdio server's process group id, if connected (for diagnostics and tests)."""
        return None if self._connection is None else self._connection.server_pid

    async def start_session(self, event: Mapping[str, Any]) -> str:
        """Send `track_session_start`; the server's session id."""
        return await self._deliver("track_session_start", event, read_start_answer)

    async def end_session(self, event: Mapping[str, Any]) -> str:
        """Send `track_session_end`; "ended" or "not_found"."""
        return await self._deliver("track_session_end", event, read_end_answer)

    async def aclose(self, *, abort: bool = False) -> None:
        """Close the session and stop a stdio server (at once with `abort`); idempotent."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close(abort=abort)

    def abort(self) -> None:
        """Kill a stdio server now and cut an HTTP session (a deadline ran out); safe at any time."""
        if self._connection is not None:
            self._connection.abort()

    async def __aenter__(self) -> SessionBuddyClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _deliver(self, tool: str, event: Mapping[str, Any], read: Callable[..., str]) -> str:
        if self._closed:
            raise ServerUnavailableError("the client is closed")
        arguments = {key: value for key, value in event.items() if key != "token"}
        sent = arguments.copy()  # what the spool holds of the event anyway
        token = self._token()  # read at send time: a rotated token is picked up at once
        if token:
            arguments["token"] = token
        resent = False
        while True:
            connection = await self._connected()
            try:
                answer = await connection.call(tool, arguments, token=token)
            except TransientDeliveryError:
                await self._drop(connection)
                # The HTTP server forgot our session (it restarted): it never ran the call, so open
                # a new session and send it once more now: to the caller, one attempt that succeeded.
                if connection.session_lost and not resent:
                    resent = True
                    continue
                raise
            said = read(answer, token=token, clean=connection.scrub)
            if connection.repeats_secret(said, besides=sent):  # (recorded: a dead letter says so)
                raise RejectedError(
                    f"{tool}: the server answered with a secret given for it (the token, a server.env "
                    "value or the url's password) where a session id belongs; the answer is not kept"
                )
            return said

    async def _connected(self) -> Connection:
        async with self._connect_lock:
            current = self._connection
            if current is not None and current.alive:
                return current
            if current is not None:  # the server died since the last call: reconnect now
                await self._drop(current)
            connection = Connection(self.destination)
            await connection.open()
            self._connection = connection
            return connection

    async def _drop(self, connection: Connection) -> None:
        if self._connection is connection:
            self._connection = None
        await connection.close(abort=True)
