"""Every answer shape in CONTRACT.md is read correctly, without a server."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from oneiric_session.common.digest import token_digest
from oneiric_session.errors import AuthenticationError, RejectedError
from oneiric_session.transport.answers import USER_ID_DEFECT_EXPLAINED, read_end_answer, read_start_answer

TOKEN = "tok-9c1d-secret"
AUTH = "Authentication failed: invalid or expired token"


def answer(
    text: str | None = None, structured: dict[str, Any] | None = None, *, is_error: bool = False
) -> Any:
    content = [] if text is None else [SimpleNamespace(type="text", text=text)]
    return SimpleNamespace(is_error=is_error, structured_content=structured, content=content)


TRACKED = {"session_id": "demo-20260101-000000", "status": "tracked", "error": None}


@pytest.mark.parametrize(
    "shape",
    [
        answer(json.dumps(TRACKED), TRACKED),  # 0.23.0: both
        answer(None, TRACKED),  # structured only
        answer(json.dumps(TRACKED)),  # JSON text only
        answer("demo-20260101-000000"),  # older servers: the bare id
        answer(None, {"result": TRACKED}),  # a wrapped return value
    ],
)
def test_start_success_in_every_shape(shape: Any) -> None:
    assert read_start_answer(shape) == "demo-20260101-000000"


@pytest.mark.parametrize(
    ("shape", "status"),
    [
        (answer(None, {"session_id": "s", "status": "ended", "error": None}), "ended"),
        (answer(json.dumps({"session_id": "s", "status": "not_found", "error": None})), "not_found"),
        (answer("Session s ended"), "ended"),
        (answer("Session s not found"), "not_found"),
    ],
)
def test_end_statuses(shape: Any, status: str) -> None:
    assert read_end_answer(shape) == status


@pytest.mark.parametrize(
    "shape",
    [
        answer(f"❌ {AUTH}", is_error=True),
        answer(AUTH),
        answer(
            "Error calling tool 'track_session_start': structured_content must be a dict or None. "
            f"Got str: '❌ {AUTH}'",
            is_error=True,
        ),
        answer(None, {"session_id": None, "status": "error", "error": AUTH}),
    ],
)
def test_authentication_failure_in_every_form(shape: Any) -> None:
    """Each names the token it refused by its digest only (the agent refuses that token, not one
    that replaced it while the call was on its way)."""
    with pytest.raises(AuthenticationError) as caught:
        read_start_answer(shape, token=TOKEN)
    assert caught.value.token_digest == token_digest(TOKEN)
    assert TOKEN not in str(caught.value) and TOKEN not in repr(vars(caught.value))
    with pytest.raises(AuthenticationError) as caught:
        read_start_answer(shape, token=None)
    assert caught.value.token_digest == ""


@pytest.mark.parametrize("tool", ["track_session_start", "track_session_end"])
def test_the_0_23_0_user_id_defect_is_a_permanent_auth_failure_that_says_what_to_do(tool: str) -> None:
    """Auth on, valid token: 0.23.0's decorator injects `user_id` and the tool call fails (CONTRACT.md)."""
    defect = answer(
        f"Error calling tool '{tool}': register_admin_shell_tracking_tools.<locals>.{tool}() "
        "got an unexpected keyword argument 'user_id'",
        is_error=True,
    )
    read = read_start_answer if tool == "track_session_start" else read_end_answer
    with pytest.raises(AuthenticationError) as caught:
        read(defect, token=TOKEN)
    assert caught.value.permanent
    message = str(caught.value)
    assert message.startswith(f"{tool}: {USER_ID_DEFECT_EXPLAINED} (server said: Error calling tool")
    assert "without SESSION_BUDDY_SECRET" in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "shape",
    [
        answer(None, {"session_id": None, "status": "error", "error": "Path does not exist: /x"}),
        answer("1 validation error for call[track_session_start]\nfoo\n  Extra inputs", is_error=True),
        answer(is_error=True),
        answer("two words"),
        answer(None, {"status": "weird"}),
        answer(),
        answer(None, {"session_id": None, "status": "tracked"}),
    ],
)
def test_refusals_and_unrecognised_answers_are_permanent(shape: Any) -> None:
    with pytest.raises(RejectedError) as caught:
        read_start_answer(shape)
    assert not isinstance(caught.value, AuthenticationError)


@pytest.mark.parametrize("status", [["tracked"], {"ended": 1}])
@pytest.mark.parametrize("read", [read_start_answer, read_end_answer])
def test_a_status_that_is_no_string_is_unrecognised(read: Any, status: Any) -> None:
    """It raised TypeError (a list is not hashable): `check` printed a traceback, and the agent
    took it for a transient failure and sent the event again for ever."""
    with pytest.raises(RejectedError, match="unrecognised answer"):
        read(answer(None, {"session_id": "s-1", "status": status}))


def test_server_text_in_errors_is_one_line_capped_and_never_holds_the_token() -> None:
    echoed = f"bad token {TOKEN}\n\x1b[31m" + "x" * 5000
    with pytest.raises(RejectedError) as caught:
        read_end_answer(answer(None, {"status": "error", "error": echoed}), token=TOKEN)
    message = str(caught.value)
    assert TOKEN not in message and "\n" not in message and "\x1b" not in message
    assert len(message) < 400
