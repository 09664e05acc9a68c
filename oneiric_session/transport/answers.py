"""Read a tool answer in each shape CONTRACT.md lists; refusals become RejectedError/AuthenticationError.

Works on anything shaped like `mcp_types.CallToolResult` (`is_error`,
`structured_content`, `content` items with `type`/`text`), so it is tested
without a server. Text taken from the server is made one safe line, capped,
and stripped of the token before it reaches an exception message.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from oneiric_session.common.digest import token_digest
from oneiric_session.common.safetext import sanitize_text
from oneiric_session.errors import AuthenticationError, RejectedError

__all__ = [
    "MAX_SESSION_ID_CHARS",
    "USER_ID_DEFECT_EXPLAINED",
    "read_end_answer",
    "read_start_answer",
    "server_text",
]

_AUTH_MARKER = "authentication failed"
# Session-Buddy 0.23.0 with auth on: a valid token passes, then its auth decorator passes the
# tool a `user_id` argument the tool does not take, so every authenticated call fails.
_USER_ID_DEFECT = "unexpected keyword argument 'user_id'"
USER_ID_DEFECT_EXPLAINED = (
    "Session-Buddy 0.23.0 rejects authenticated calls (known defect: its auth decorator injects "
    "user_id); run it without SESSION_BUDDY_SECRET or upgrade"
)
# Older servers answer a start with the bare session id as text.
_BARE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_MAX_MESSAGE_CHARS = 300
# What a session id from a server may hold: it is stored, sent back with the end and printed.
MAX_SESSION_ID_CHARS = 256
_START_OK = frozenset({"tracked"})
_END_OK = frozenset({"ended", "not_found"})


class ToolAnswer(Protocol):
    is_error: bool
    structured_content: dict[str, Any] | None
    content: list[Any]


def server_text(text: str, token: str | None = None) -> str:
    """Server-supplied text made safe for a message: one line, capped, never holding the token."""
    if token:
        text = text.replace(token, "[token]")
    return sanitize_text(text, _MAX_MESSAGE_CHARS)


def _texts(answer: ToolAnswer) -> str:
    blocks = answer.content or ()
    parts = [getattr(block, "text", "") for block in blocks if getattr(block, "type", "") == "text"]
    return "\n".join(part for part in parts if isinstance(part, str))


def _payload(answer: ToolAnswer) -> dict[str, Any] | str | None:
    """The answer as a dict (structured, or JSON text), else the bare text, else None."""
    structured = answer.structured_content
    if isinstance(structured, dict):
        # Servers that wrap a return value as {"result": ...} (0.23.0's health_check does).
        inner = structured.get("result") if set(structured) == {"result"} else None
        if isinstance(inner, dict | str):
            return inner
        return structured
    text = _texts(answer).strip()
    if not text:
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, dict) else text


def _refuse(tool: str, message: str, token: str | None) -> RejectedError:
    clean = server_text(message, token)
    sent = token_digest(token)
    if _USER_ID_DEFECT in message:
        return AuthenticationError(
            f"{tool}: {USER_ID_DEFECT_EXPLAINED} (server said: {clean})", token_digest=sent
        )
    if _AUTH_MARKER in message.lower():
        return AuthenticationError(f"{tool}: the server refused the token: {clean}", token_digest=sent)
    return RejectedError(f"{tool}: the server refused the event: {clean}")


def _read(answer: ToolAnswer, tool: str, ok: frozenset[str], token: str | None) -> dict[str, Any] | str:
    payload = _payload(answer)
    status = payload.get("status") if isinstance(payload, dict) else None
    if isinstance(payload, dict) and isinstance(status, str) and status in ok and not answer.is_error:
        return payload
    text = _texts(answer)
    if isinstance(payload, dict):
        if status == "error" or answer.is_error:
            raise _refuse(tool, str(payload.get("error") or payload.get("message") or text or payload), token)
        raise RejectedError(f"{tool}: unrecognised answer: {server_text(json.dumps(payload), token)}")
    if answer.is_error:
        raise _refuse(tool, text or "error without a message", token)
    if payload is None:
        raise RejectedError(f"{tool}: empty answer")
    if _AUTH_MARKER in payload.lower():  # some servers answer the refusal as a plain string
        raise _refuse(tool, payload, token)
    return payload


def read_start_answer(answer: ToolAnswer, *, token: str | None = None) -> str:
    """The server's session id from a `track_session_start` answer."""
    payload = _read(answer, "track_session_start", _START_OK, token)
    if isinstance(payload, dict):
        session_id = payload.get("session_id")
        if isinstance(session_id, str) and len(session_id) > MAX_SESSION_ID_CHARS:
            raise RejectedError(
                f"track_session_start: the server answered a session id of {len(session_id)} characters "
                f"(more than {MAX_SESSION_ID_CHARS}): {server_text(session_id[:80], token)}"
            )
        if isinstance(session_id, str) and session_id:
            return session_id
        raise RejectedError("track_session_start: answer 'tracked' without a session id")
    if _BARE_ID.match(payload):
        return payload
    raise RejectedError(f"track_session_start: unrecognised answer: {server_text(payload, token)}")


def read_end_answer(answer: ToolAnswer, *, token: str | None = None) -> str:
    """The status ("ended" or "not_found") from a `track_session_end` answer."""
    payload = _read(answer, "track_session_end", _END_OK, token)
    if isinstance(payload, dict):
        return str(payload["status"])
    # Older servers acknowledge with free text.
    return "not_found" if "not found" in payload.lower() else "ended"
