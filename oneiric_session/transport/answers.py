"""Read a tool answer in each shape CONTRACT.md lists; refusals become RejectedError/AuthenticationError.

Works on anything shaped like `mcp_types.CallToolResult` (`is_error`,
`structured_content`, `content` items with `type`/`text`), so it is tested
without a server. Text taken from the server is made one safe line, capped,
and stripped of the token before it reaches an exception message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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


# How server text is made safe to repeat in a message (one line, capped, no secret in it).
Clean = Callable[[str], str]


def server_text(text: str, token: str | None = None) -> str:
    """Server-supplied text made safe for a message: one line, capped, never holding the token."""
    if token:
        text = text.replace(token, "[token]")
    return sanitize_text(text, _MAX_MESSAGE_CHARS)


def _cutting(token: str | None) -> Clean:
    return lambda text: server_text(text, token)


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
    except (ValueError, RecursionError):  # (a text of thousands of `[`)
        return text
    return decoded if isinstance(decoded, dict) else text


def _refuse(tool: str, message: str, token: str | None, clean: Clean) -> RejectedError:
    said = clean(message)
    sent = token_digest(token)
    if _USER_ID_DEFECT in message:
        return AuthenticationError(
            f"{tool}: {USER_ID_DEFECT_EXPLAINED} (server said: {said})", token_digest=sent
        )
    if _AUTH_MARKER in message.lower():
        return AuthenticationError(f"{tool}: the server refused the token: {said}", token_digest=sent)
    return RejectedError(f"{tool}: the server refused the event: {said}")


def _read(
    answer: ToolAnswer, tool: str, ok: frozenset[str], token: str | None, clean: Clean
) -> dict[str, Any] | str:
    payload = _payload(answer)
    status = payload.get("status") if isinstance(payload, dict) else None
    if isinstance(payload, dict) and isinstance(status, str) and status in ok and not answer.is_error:
        return payload
    text = _texts(answer)
    if isinstance(payload, dict):
        if status == "error" or answer.is_error:
            raise _refuse(
                tool, str(payload.get("error") or payload.get("message") or text or payload), token, clean
            )
        raise RejectedError(f"{tool}: unrecognised answer: {clean(json.dumps(payload))}")
    if answer.is_error:
        raise _refuse(tool, text or "error without a message", token, clean)
    if payload is None:
        raise RejectedError(f"{tool}: empty answer")
    if _AUTH_MARKER in payload.lower():  # some servers answer the refusal as a plain string
        raise _refuse(tool, payload, token, clean)
    return payload


def read_start_answer(answer: ToolAnswer, *, token: str | None = None, clean: Clean | None = None) -> str:
    """The server's session id from a `track_session_start` answer. `clean`: how server text is made
    safe to repeat (the connection's `scrub`: its tokens and its destination's secrets cut out);
    else `server_text` with `token`."""
    clean = clean or _cutting(token)
    payload = _read(answer, "track_session_start", _START_OK, token, clean)
    if isinstance(payload, dict):
        session_id = payload.get("session_id")
        if isinstance(session_id, str) and len(session_id) > MAX_SESSION_ID_CHARS:
            raise RejectedError(
                f"track_session_start: the server answered a session id of {len(session_id)} characters "
                f"(more than {MAX_SESSION_ID_CHARS}): {clean(session_id)[:80]}"
            )
        if isinstance(session_id, str) and session_id:
            return session_id
        raise RejectedError("track_session_start: answer 'tracked' without a session id")
    if _BARE_ID.match(payload):
        return payload
    raise RejectedError(f"track_session_start: unrecognised answer: {clean(payload)}")


def read_end_answer(answer: ToolAnswer, *, token: str | None = None, clean: Clean | None = None) -> str:
    """The status ("ended" or "not_found") from a `track_session_end` answer (`clean`: as for
    `read_start_answer`)."""
    payload = _read(answer, "track_session_end", _END_OK, token, clean or _cutting(token))
    if isinstance(payload, dict):
        return str(payload["status"])
    # Older servers acknowledge with free text.
    return "not_found" if "not found" in payload.lower() else "ended"
