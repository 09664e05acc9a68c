"""CONTRACT.md section 1, checked against the real Session-Buddy 0.23.0 with a bare mcp client.

If these fail, the contract (and the transport built on it) no longer matches the real server.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import platform
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "contract-test-secret-" + "s" * 32


def params(launch: Any) -> StdioServerParameters:
    return StdioServerParameters(command=launch.command, args=launch.args, env=launch.env, cwd=launch.cwd)


def timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def start_event(component: str, cwd: Path, **overrides: Any) -> dict[str, Any]:
    event = {
        "event_version": "1.0",
        "event_id": str(uuid.uuid4()),
        "event_type": "session_start",
        "component_name": component,
        "shell_type": "ContractShell",
        "timestamp": timestamp(),
        "pid": os.getpid(),
        "user": {"username": getpass.getuser(), "home": str(cwd)},
        "hostname": platform.node(),
        "environment": {
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "cwd": str(cwd),
        },
        "metadata": {"component_version": "test", "adapters": []},
    }
    return event | overrides


def end_event(session_id: str, **overrides: Any) -> dict[str, Any]:
    event = {
        "session_id": session_id,
        "timestamp": timestamp(),
        "event_type": "session_end",
        "metadata": {"exit_reason": "user_exit", "duration_seconds": 1.5},
    }
    return event | overrides


def answer(result: Any) -> dict[str, Any]:
    """The answer, checking 0.23.0 sends it both as structured content and as one JSON text."""
    assert not result.is_error, result.content
    assert len(result.content) == 1
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    session_buddy_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Client, Path]]:
    launch = session_buddy_launcher(tmp_path_factory.mktemp("sb-home"))
    connected: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    # The client's cancel scopes must be entered and left by one task; fixture setup and
    # teardown run in different ones, so a dedicated task owns the connection.
    async def own() -> None:
        async with Client(params(launch), read_timeout_seconds=60) as client:  # mode auto: probes first
            connected.set_result(client)
            await stop.wait()

    owner = asyncio.create_task(own())
    await asyncio.wait({connected, owner}, return_when=asyncio.FIRST_COMPLETED)
    if not connected.done():
        owner.result()  # the connection failed: raise its error here
    yield connected.result(), launch.home
    stop.set()
    await owner


async def test_auto_mode_falls_back_to_the_initialize_handshake(server: tuple[Client, Path]) -> None:
    client, _ = server
    assert client.server_info is not None
    assert (client.server_info.name, client.server_info.version) == ("session-buddy", "0.23.0")
    assert client.protocol_version == "2025-11-25"


async def test_start_tools_reject_unknown_arguments(server: tuple[Client, Path]) -> None:
    client, _ = server
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert tools["track_session_start"].input_schema["additionalProperties"] is False
    assert "health_check" in tools


async def test_start_then_end(server: tuple[Client, Path]) -> None:
    client, home = server
    started = answer(await client.call_tool("track_session_start", start_event("contract", home)))
    assert started["status"] == "tracked"
    assert started["error"] is None
    assert re.fullmatch(r"contract-\d{8}-\d{6}", started["session_id"])

    ended = answer(await client.call_tool("track_session_end", end_event(started["session_id"])))
    assert ended == {"session_id": started["session_id"], "status": "ended", "error": None}


async def test_unknown_session_id_still_answers_ended(server: tuple[Client, Path]) -> None:
    client, _ = server
    ended = answer(await client.call_tool("track_session_end", end_event("never-started-20200101-000000")))
    assert ended == {"session_id": "never-started-20200101-000000", "status": "ended", "error": None}


async def test_two_starts_in_one_second_share_an_id(server: tuple[Client, Path]) -> None:
    client, home = server
    second = timestamp(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    ids = [
        answer(await client.call_tool("track_session_start", start_event("twice", home, timestamp=second)))
        for _ in range(2)
    ]
    assert [a["status"] for a in ids] == ["tracked", "tracked"]
    assert ids[0]["session_id"] == ids[1]["session_id"] == "twice-20300102-030405"


async def test_refused_event_is_status_error_every_time(server: tuple[Client, Path]) -> None:
    client, home = server
    event = start_event("contract", home / "not-there")
    for _ in range(2):  # the same event fails the same way: permanent
        refused = answer(await client.call_tool("track_session_start", event))
        assert refused["status"] == "error"
        assert refused["session_id"] is None
        assert refused["error"].startswith("Path does not exist: ")


async def test_bad_component_name_is_status_error(server: tuple[Client, Path]) -> None:
    client, home = server
    refused = answer(await client.call_tool("track_session_start", start_event("bad name\n", home)))
    assert refused["status"] == "error"
    assert "Invalid component_name" in refused["error"]


@pytest.mark.parametrize(
    ("override", "detail"), [({"surplus": 1}, "Unexpected keyword argument"), ({"pid": "x"}, "valid integer")]
)
async def test_argument_errors_are_is_error_validation_text(
    server: tuple[Client, Path], override: dict[str, Any], detail: str
) -> None:
    client, home = server
    result = await client.call_tool("track_session_start", start_event("contract", home, **override))
    assert result.is_error
    assert result.structured_content is None
    assert result.content[0].text.startswith("1 validation error for call[track_session_start]")
    assert detail in result.content[0].text


async def test_auth_on_failure_forms(session_buddy_launcher: Callable[..., Any], tmp_path: Path) -> None:
    launch = session_buddy_launcher(tmp_path / "sb-home", {"SESSION_BUDDY_SECRET": SECRET})
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "session-buddy",
            "sub": "contract",
            "aud": "session-buddy",
            "iat": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "scopes": ["read"],
        },
        SECRET,
        algorithm="HS256",
    )
    async with Client(params(launch), mode="legacy", read_timeout_seconds=60) as client:
        texts = {}
        for label, extra in (("none", {}), ("bad", {"token": "not-a-jwt"}), ("valid", {"token": token})):
            result = await client.call_tool("track_session_start", start_event("auth", launch.home, **extra))
            assert result.is_error
            assert result.structured_content is None
            texts[label] = result.content[0].text
    wrapped = (
        "Error calling tool 'track_session_start': structured_content must be a dict or None. Got str: '"
    )
    assert texts["none"].startswith(wrapped)
    assert "Authentication failed: Token required" in texts["none"]
    assert texts["bad"].startswith(wrapped)
    assert "Authentication failed: invalid or expired token" in texts["bad"]
    # The 0.23.0 defect: a valid token passes the check, then the tool rejects the injected user_id.
    assert "unexpected keyword argument 'user_id'" in texts["valid"]
    assert token not in texts["valid"]
