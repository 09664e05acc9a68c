"""One MCP session to one destination, with connect/call timeouts and errors mapped at this boundary.

The session is entered and left by one background task that owns it: anyio
task groups and cancel scopes must exit in the task that entered them, while
calls come from whichever task delivers an event. MCP, anyio, httpx and OS
errors become `oneiric_session.errors` types here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import logging
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import anyio
from pydantic import ValidationError

from oneiric_session import __version__
from oneiric_session import mcp_compat as mcp
from oneiric_session.common.scrub import (
    WORD_ONLY_BELOW,
    as_shown,
    cut_spans,
    holds_piece,
    redacted_traceback,
    secret_forms,
    secret_spans,
    withheld,
)
from oneiric_session.errors import (
    DeliveryError,
    DeliveryTimeoutError,
    RejectedError,
    ServerUnavailableError,
)
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.destination_secrets import url_credentials
from oneiric_session.tracking.url_rules import unusable_url
from oneiric_session.transport.answers import server_text
from oneiric_session.transport.bounded_http import BoundedHttp
from oneiric_session.transport.stdio import MAX_LINE_BYTES, ServerProcess, child_environment

__all__ = ["Connection"]

logger = logging.getLogger(__name__)

_CLIENT_INFO = mcp.types.Implementation(name="oneiric-session", version=__version__)
# JSON-RPC errors a server answers for a call it will never accept (unknown tool, bad params).
_PERMANENT_CODES = frozenset(
    {mcp.types.METHOD_NOT_FOUND, mcp.types.INVALID_PARAMS, mcp.types.INVALID_REQUEST}
)
# What a 2.x client raises when a request times out inside the SDK (1.x: HTTP 408).
_REQUEST_TIMEOUT_CODES = frozenset({getattr(mcp.types, "REQUEST_TIMEOUT", -32001), 408})
# Bound on tearing a session down; the stdio shutdown inside is itself bounded.
_CLOSE_SECONDS = 10.0
# What a call with an MCP session id the HTTP server does not know (it restarted, or expired the
# session) raises: the SDK client's stand-in for a bare 404, or the SDK server's own error body.
# INVALID_REQUEST would read as permanent; the call was never run, so it is sent again on a new session.
_SESSION_LOST_MESSAGES = frozenset({"session terminated", "session not found"})
# How much of a server's text `scrub` looks at (it shows at most a few hundred characters of it).
_SCRUBBED_CHARS = 2048
# A piece of a secret this long in a session id is the secret's (`repeats_secret`).
_ID_PIECE_CHARS = 16
# What one answer from a server may hold, on either transport (a stdio answer is one line).
MAX_ANSWER_BYTES = MAX_LINE_BYTES


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups raised by task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Connection:
    """Connect once, call many times, close once. Not reusable after close: make a new one."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._server: ServerProcess | None = None
        self._http: BoundedHttp | None = None
        self._client: mcp.ClientHandle | None = None
        self._owner: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None  # the owner, kept through close() for abort()
        self._closing = asyncio.Event()
        self.session_lost = False  # the HTTP server forgot this session: a new one is needed
        # Tokens sent on this connection: scrubbed from every server-supplied text we repeat
        # (a server may echo one on stderr). Memory only.
        self._tokens: set[str] = set()
        self._destination_secrets: tuple[str, ...] | None = None  # (`_secrets`, once)

    @property
    def alive(self) -> bool:
        """False once the server process exited or the session ended (the next call must reconnect)."""
        if self._client is None or self._owner is None or self._owner.done() or self.session_lost:
            return False
        return self._server is None or not self._server.exited

    @property
    def server_name(self) -> str | None:
        """The name the server gave in the MCP handshake (None before it)."""
        info = None if self._client is None else self._client.server_info
        return None if info is None else info.name

    @property
    def server_pid(self) -> int | None:
        """The launcher's pid, which is also the server's process group id (stdio only)."""
        return None if self._server is None else self._server.pid

    def _transport(self) -> Any:
        if self.destination.transport == "http":
            if not self.destination.url:
                raise ServerUnavailableError("transport is http but no url is configured")
            self._http = BoundedHttp(server_text(self.destination.describe()), MAX_ANSWER_BYTES)
            return self._http.transport(self.destination.url)
        command = self.destination.command
        env = child_environment(dict(self.destination.env))
        resolved = command
        if os.sep not in command:
            resolved = shutil.which(command, path=env.get("PATH")) or ""
        elif self.destination.cwd and not os.path.isabs(command):
            resolved = os.path.join(self.destination.cwd, command)
        if not resolved or not os.access(resolved, os.X_OK):
            raise ServerUnavailableError(f"server command not found: {server_text(command)}")
        self._server = ServerProcess([command, *self.destination.args], env=env, cwd=self.destination.cwd)
        return self._server.transport()

    async def open(self) -> None:
        """Start the server (stdio) or reach it (http) and complete the MCP handshake."""
        unusable = unusable_url(self.destination.url or "") if self.destination.transport == "http" else None
        if unusable is not None:
            # An older version's row (settings refuse such a url): httpx's error would name the
            # "port", maybe a password, and no retry can deliver it.
            raise RejectedError(f"connecting: the url cannot be used: {unusable}; it is not shown")
        transport = self._transport()
        ready: asyncio.Future[mcp.ClientHandle] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(transport, ready), name="oneiric-session-mcp")
        self._task = self._owner
        try:
            async with asyncio.timeout(self.destination.tuning.connect_seconds):
                self._client = await asyncio.shield(ready)
        except TimeoutError as exc:
            await self.close(abort=True)
            raise DeliveryTimeoutError(
                f"no MCP handshake within {self.destination.tuning.connect_seconds:g} s"
                f" from {server_text(self.destination.describe())}{self._tail()}"
            ) from exc
        except BaseException as exc:
            await self.close(abort=True)
            if isinstance(exc, Exception):
                raise self._map(exc, "connecting") from exc
            raise

    async def _own(self, transport: Any, ready: asyncio.Future[mcp.ClientHandle]) -> None:
        # The initialize handshake every server speaks (on 2.x, not the `server/discover` probe).
        try:
            async with mcp.open_client(transport, client_info=_CLIENT_INFO) as client:
                if not ready.done():
                    ready.set_result(client)
                await self._closing.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
        except BaseException as exc:  # handed to the caller of open(), or seen as a dead connection
            if not ready.done():
                ready.set_exception(_leaf(exc) if isinstance(_leaf(exc), Exception) else exc)
            else:
                logger.debug("MCP session ended: %s", type(_leaf(exc)).__name__)

    async def call(self, tool: str, arguments: dict[str, Any], *, token: str | None = None) -> Any:
        """One `tools/call`; the answer, as `mcp_compat.AnswerView`. Raises DeliveryError types only."""
        if token:
            self._tokens.add(token)
        if self._client is None or not self.alive:
            raise ServerUnavailableError(f"connection to the server is closed{self._tail()}")
        seconds = self.destination.tuning.call_seconds
        try:
            async with asyncio.timeout(seconds):
                # send_request, not call_tool: call_tool lists the tools first (an extra round
                # trip) and validates against an output schema; the answer is read in answers.py.
                return mcp.answer_view(await self._client.send_call(tool, arguments))
        except TimeoutError as exc:
            raise DeliveryTimeoutError(f"{tool}: no answer within {seconds:g} s{self._tail()}") from exc
        except Exception as exc:
            raise self._map(exc, tool) from exc

    def abort(self) -> None:
        """Kill a stdio server at once and cancel the session's task: a close under way ends soon."""
        if self._server is not None:
            self._server.abort()
        if self._task is not None:
            self._task.cancel()

    async def close(self, *, abort: bool = False) -> None:
        """End the session; `abort` kills a stdio server at once instead of giving it the grace."""
        if abort and self._server is not None:
            self._server.abort()
        self._closing.set()
        owner, self._owner = self._owner, None
        self._client = None
        if owner is None:
            return
        if abort:
            owner.cancel()
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(_CLOSE_SECONDS),
            contextlib.suppress(BaseException),
        ):
            await owner

    def _tail(self) -> str:
        if self._http is not None and self._http.failure:
            return f" ({self._http.failure})"
        if self._server is None:
            return ""
        parts = []
        if self._server.failure:
            parts.append(f"{self._server.failure}: {server_text(self.destination.describe())}")
        if self._server.returncode is not None:
            parts.append(f"server exited with status {self._server.returncode}")
        tail = self._server.stderr_tail()
        if tail:
            parts.append(f"stderr: {self.scrub(tail)}")
        return f" ({'; '.join(parts)})" if parts else ""

    def scrub(self, text: str) -> str:
        """Server-supplied text made safe to repeat: one line, capped, with no token sent on this
        connection and no secret of its destination (a server.env value a stdio server may print
        as it fails, the url's password): the text goes into logs, the spool and `status`.
        Each secret is cut out of all of it first (cutting a long token brings later text into
        what is shown); then only its start is looked at for a piece of one (what is shown of it
        is shorter still): a server's text may be megabytes long, and looking for each piece of a
        secret in all of it would stall the agent. Its escapes and controls go first: a secret a
        colour code, a NUL or a zero-width space splits would be whole again once they are taken
        out for showing (`as_shown`)."""
        text = as_shown(text)
        secrets = self._secrets()
        found = [
            *secret_spans(text, secret_forms(self._tokens), "[token]"),
            *secret_spans(text, secret_forms(secrets), "[secret]"),
        ]
        if found:
            text = cut_spans(text, found)
        text = text[:_SCRUBBED_CHARS]
        return server_text(withheld(text, [*self._tokens, *secrets]))

    def repeats_secret(self, text: str, *, besides: Mapping[str, Any] | None = None) -> bool:
        """Whether `text` (an answer kept: a session id, stored and shown) holds a token sent on
        this connection or a secret of its destination (of WORD_ONLY_BELOW characters or more)
        beyond what the event `besides` holds (it is stored and shown too): `_id_repeats`."""
        return _id_repeats(self._long_secrets(), as_shown(text), besides or {})

    def shows_secret(self, text: str) -> bool:
        """Whether `text`, printed whole, would show a token sent on this connection or a secret
        of its destination (of WORD_ONLY_BELOW characters or more), by the rules of `scrub`: in one
        of its forms, or a piece of it (`scrub.withheld`)."""
        values = self._long_secrets()
        text = as_shown(text)
        return any(form in text for value in values for form in _long_forms(value)) or (
            bool(values) and withheld(text, values) != text
        )

    def _long_secrets(self) -> list[str]:
        return [value for value in (*self._tokens, *self._secrets()) if len(value) >= WORD_ONLY_BELOW]

    def _secrets(self) -> tuple[str, ...]:
        """The destination's secrets: its secret values (`Destination.secrets`), the password of
        each one that is a url (`AUTH_DB_URL`: a server may print the password alone), and the
        url's credentials as httpx sends them (`Authorization: Basic base64(user:password)`)."""
        if self._destination_secrets is None:  # (the destination's are the same for every call)
            values = tuple(self.destination.secrets().values())
            passwords = (url_credentials(value) for value in values if "://" in value)
            found = (*values, *(credentials[1] for credentials in passwords if credentials))
            self._destination_secrets = (*found, *_basic_credentials(self.destination))
        return self._destination_secrets

    def _map(self, exc: BaseException, doing: str) -> DeliveryError:
        """Translate a foreign error into the project's tree (never with the token in the message)."""
        exc = _leaf(exc)
        if isinstance(exc, DeliveryError):
            return exc
        if self._http is not None and self._http.failure:  # the SDK's stand-in error says less
            return ServerUnavailableError(f"{doing}: {self._http.failure}")
        if isinstance(exc, mcp.MCPError):
            code, raw = mcp.error_code(exc), mcp.error_message(exc)
            message = self.scrub(raw)
            if code in _REQUEST_TIMEOUT_CODES:
                return DeliveryTimeoutError(f"{doing}: {message}{self._tail()}")
            if code == mcp.types.CONNECTION_CLOSED:
                return ServerUnavailableError(f"{doing}: the server closed the connection{self._tail()}")
            if (
                self.destination.transport == "http"
                and code in mcp.SESSION_LOST_CODES
                and raw.strip().lower() in _SESSION_LOST_MESSAGES
            ):
                self.session_lost = True
                return ServerUnavailableError(f"{doing}: the server no longer knows this session ({message})")
            if code in _PERMANENT_CODES and doing != "connecting":
                return RejectedError(f"{doing}: server error {code}: {message}")
            return ServerUnavailableError(f"{doing}: server error {code}: {message}{self._tail()}")
        if isinstance(exc, mcp.HTTPTimeout):
            return DeliveryTimeoutError(f"{doing}: HTTP timeout: {type(exc).__name__}")
        if isinstance(exc, mcp.HTTPError | OSError):
            detail = self.scrub(str(exc) or type(exc).__name__)
            return ServerUnavailableError(f"{doing}: {detail}{self._tail()}")
        if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError | anyio.EndOfStream):
            return ServerUnavailableError(f"{doing}: the connection broke{self._tail()}")
        if isinstance(exc, ValidationError):
            return ServerUnavailableError(f"{doing}: the server sent a malformed answer{self._tail()}")
        if isinstance(exc, mcp.httpx.InvalidURL | OverflowError):  # httpx (or connect) refused the url
            return RejectedError(f"{doing}: the url cannot be used ({type(exc).__name__}); it is not shown")
        text = redacted_traceback(exc, lambda each: self.scrub(str(each)))
        logger.warning("unexpected error while %s:\n%s", doing, text)
        return ServerUnavailableError(f"{doing}: unexpected {type(exc).__name__}{self._tail()}")


def _basic_credentials(destination: Destination) -> list[str]:
    credentials = url_credentials(destination.url or "")
    if credentials is None:
        return []
    user, password = (unquote(part) for part in credentials)
    return [base64.b64encode(f"{user}:{password}".encode("utf-8", "replace")).decode("ascii")]


def _id_repeats(values: list[str], session_id: str, event: Mapping[str, Any]) -> bool:
    """An id of the real server's shape, `<component>-<YYYYmmdd>-<HHMMSS>[-N]` of the event's
    component, holds nothing else. Of another id: one of `values` found whole counts unless the
    event holds it whole too; a piece (`_ID_PIECE_CHARS`) counts once the event's strings are
    taken out of the id. (A value that is no secret under a secret's name, a secret file named
    after the project, `.../oneiric-session-2026`, shares the component and the date.)"""
    if not values or _server_made(session_id, event):
        return False
    strings = _strings_of(event)
    sent = "\x00".join(strings)
    rest = session_id
    for string in sorted((s for s in strings if len(s) >= 4), key=len, reverse=True):
        rest = rest.replace(string, "\x00")  # (a NUL: no piece of a secret holds one)
    for value in values:
        forms = _long_forms(value)
        if any(form in session_id for form in forms) and not any(form in sent for form in forms):
            return True
        if holds_piece(rest, [value], size=_ID_PIECE_CHARS, least=_ID_PIECE_CHARS):
            return True
    return False


def _server_made(session_id: str, event: Mapping[str, Any]) -> bool:
    """Whether `session_id` is of the real server's shape for `event`: its component, the date
    and time, and a number where that second had a session already."""
    component = event.get("component_name")
    if not isinstance(component, str) or not component:
        return False
    # The number: 5 digits at most (no secret of WORD_ONLY_BELOW digits fits); the date and time:
    # ones a clock shows (not 84736251-000000, a secret's digits).
    found = re.fullmatch(re.escape(component) + r"-([0-9]{8}-[0-9]{6})(?:-[0-9]{1,5})?", session_id)
    if found is None:
        return False
    try:
        datetime.datetime.strptime(found.group(1), "%Y%m%d-%H%M%S")
    except ValueError:
        return False
    return True


def _strings_of(event: Mapping[str, Any]) -> list[str]:
    """Every string of `event`, nested ones too (a cycle is walked once)."""
    found: list[str] = []
    pending: list[Any] = [event]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return found


@functools.lru_cache(maxsize=64)  # (the same few secrets, answer after answer)
def _long_forms(value: str) -> tuple[str, ...]:
    return tuple(form for form in secret_forms([value]) if len(form) >= WORD_ONLY_BELOW)
