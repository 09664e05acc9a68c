"""The three tools, with Session-Buddy 0.23.0's argument names, types and answer shapes.

Answers are built here rather than by the SDK so they are byte-for-byte what the real server
sends: the dict as `structuredContent` and the same compact JSON as one `TextContent`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from pydantic import ValidationError

from oneiric_session.mcp_compat import server_error, tool_result, types
from oneiric_session.server.auth import TokenVerifier
from oneiric_session.server.group_commit import GroupCommit
from oneiric_session.server.listing import BadQuery, SessionFilter, parse_instant
from oneiric_session.server.models import EnvironmentInfo, SessionEndEvent, SessionStartEvent, UserInfo
from oneiric_session.server.store import NewSession, SessionEnding, SessionStore

# Exit reasons are short words ("user_exit", "abnormal"); cap what a client can make us store.
MAX_EXIT_REASON_CHARS = 200
# What one event's metadata may take in the database (our clients send at most 16 KiB): any loopback
# client can call us, so a bigger one is stored as a marker saying how big it was, not whole.
MAX_STORED_METADATA_BYTES = 64 * 1024

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", SessionStartEvent, SessionEndEvent)

# The SDK derives the output schema from this: an object, like the real server's.
Answer = Annotated[types.CallToolResult, dict[str, Any]]


def answer(payload: dict[str, Any]) -> Answer:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return tool_result(text, structured=payload)


def refusal(message: str) -> Answer:
    return tool_result(message, is_error=True)


def tracking_answer(session_id: str | None, status: str, error: str | None = None) -> Answer:
    """The one answer shape of both tracking tools, keys in the real server's order.

    `status: "error"` (with `error` set) refuses the event itself: the client dead-letters it
    rather than sending it again.
    """
    return answer({"session_id": session_id, "status": status, "error": error})


def storage_failure(exc: sqlite3.Error) -> Exception:
    # A JSON-RPC error, not `status: "error"`: a busy or broken database is the server's
    # trouble, not the event's, so the client must keep the event and retry it later.
    logger.error("session store failed: %s", exc)
    return server_error(types.INTERNAL_ERROR, f"session store unavailable: {exc}")


async def stored(call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A store call from a tool, awaited off the event loop's thread (a read on a worker thread, a
    write in the next group commit), so the loop goes on serving the other calls in flight on any
    SDK version; a database error leaves as `storage_failure`, never as an answer."""
    try:
        return await call(*args)
    except sqlite3.Error as exc:
        raise storage_failure(exc) from exc


async def _on_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


def _exit_reason(metadata: dict[str, Any]) -> str | None:
    value = metadata.get("exit_reason")
    return value[:MAX_EXIT_REASON_CHARS] if isinstance(value, str) else None


def _stored_metadata(metadata: dict[str, Any], what: str) -> dict[str, Any]:
    size = len(json.dumps(metadata, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    if size <= MAX_STORED_METADATA_BYTES:
        return metadata
    logger.warning("%s metadata of %d bytes not stored (more than %d)", what, size, MAX_STORED_METADATA_BYTES)
    return {"_truncated": True, "_bytes": size}


def _duration_seconds(metadata: dict[str, Any]) -> float | None:
    value = metadata.get("duration_seconds")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


class SessionTools:
    """Tool bodies bound to one store and, when a secret is set, one token verifier."""

    def __init__(self, store: SessionStore, verifier: TokenVerifier | None = None) -> None:
        self._store = store
        self._verifier = verifier
        # Concurrent starts and ends (a client's calls in flight, many hosts) share one commit.
        self._commits = GroupCommit(store.commit)

    def _refused(self, token: str | None) -> Answer | None:
        if self._verifier is None:
            return None
        message = self._verifier.failure(token)
        return None if message is None else refusal(message)

    def _admitted(
        self, token: str | None, event: Callable[[], E], failure: str, session_id: str | None = None
    ) -> E | Answer:
        """The call's event, validated, for a caller with a valid token (checked first, as the real
        server checks it); else the answer that refuses the call."""
        if (refused := self._refused(token)) is not None:
            return refused
        try:
            return event()
        except ValidationError as exc:
            return tracking_answer(session_id, "error", f"{failure}: {exc}")

    async def track_session_start(
        self,
        event_version: str,
        event_id: str,
        event_type: str,
        component_name: str,
        shell_type: str,
        timestamp: str,
        pid: int,
        user: dict[str, str],
        hostname: str,
        environment: dict[str, str],
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> Answer:
        """Record admin shell session start events with validation and auth."""
        event = self._admitted(
            token,
            lambda: SessionStartEvent(
                event_version=event_version,
                event_id=event_id,
                event_type=event_type,
                component_name=component_name,
                shell_type=shell_type,
                timestamp=timestamp,
                pid=pid,
                user=UserInfo(**user),
                hostname=hostname,
                environment=EnvironmentInfo(**environment),
                metadata=metadata or {},
            ),
            "Session start tracking failed",
        )
        if not isinstance(event, SessionStartEvent):
            return event
        try:
            # The real server's id: the timestamp's own digits (no time-zone conversion).
            second = datetime.fromisoformat(event.timestamp).strftime("%Y%m%d-%H%M%S")
        except ValueError as exc:
            return tracking_answer(None, "error", f"Session start failed: {exc}")
        new = NewSession(
            event_id=event.event_id,
            base_session_id=f"{event.component_name}-{second}",
            component_name=event.component_name,
            shell_type=event.shell_type,
            hostname=event.hostname,
            pid=event.pid,
            user=event.user.model_dump(),
            environment=event.environment.model_dump(),
            started_at=event.timestamp,
            metadata=_stored_metadata(event.metadata, "session start"),
        )
        session_id = await stored(self._commits.run, self._store.start_work(new))
        logger.info("session started: %s (%s)", session_id, event.shell_type)
        return tracking_answer(session_id, "tracked")

    async def track_session_end(
        self,
        session_id: str,
        timestamp: str,
        event_type: str = "session_end",
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> Answer:
        """Track admin shell session end event."""
        event = self._admitted(
            token,
            lambda: SessionEndEvent(
                session_id=session_id, timestamp=timestamp, event_type=event_type, metadata=metadata or {}
            ),
            "Session end tracking failed",
            session_id,
        )
        if not isinstance(event, SessionEndEvent):
            return event
        work = self._store.end_work(
            SessionEnding(
                session_id=event.session_id,
                ended_at=event.timestamp,
                exit_reason=_exit_reason(event.metadata),
                duration_seconds=_duration_seconds(event.metadata),
                metadata=_stored_metadata(event.metadata, "session end"),
            )
        )
        status = await stored(self._commits.run, work)
        logger.info("session end: %r -> %s", event.session_id, status)
        return tracking_answer(session_id, status)

    async def list_sessions(
        self,
        open_only: bool = False,
        component: str | None = None,
        user: str | None = None,
        host: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        token: str | None = None,
    ) -> Answer:
        """List recorded sessions, newest start first, one page at a time (read-only).

        Filters: open_only (not ended yet), component, user, host (exact), since / until (ISO 8601,
        start time in [since, until)). limit: page size, 1-500 (default 100). Pass the answer's
        next_cursor as cursor for the next page; null means this was the last one.
        """
        if (refused := self._refused(token)) is not None:
            return refused
        try:
            where = SessionFilter(
                open_only=open_only,
                component=component,
                user=user,
                host=host,
                since=parse_instant(since, "since") if since else None,
                until=parse_instant(until, "until") if until else None,
            )
            read = functools.partial(self._store.list_page, where, limit=limit, cursor=cursor)
            page = await stored(_on_thread, read)
        except BadQuery as exc:
            return answer({"sessions": [], "next_cursor": None, "status": "error", "error": str(exc)})
        return answer(
            {"sessions": page.sessions, "next_cursor": page.next_cursor, "status": "ok", "error": None}
        )

    async def health_check(self) -> str:
        """Report that the server is up and its session store answers."""
        count = await stored(_on_thread, self._store.count_sessions)
        return f"✅ MCP server is operational and responding to requests.\nSessions recorded: {count}"
