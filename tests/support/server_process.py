"""Drive the bundled server as a real subprocess from synchronous tests.

`connect()` launches `python -m oneiric_session serve` over stdio (or connects to a URL)
with the SDK's own client, kept open on an anyio blocking portal so one server can serve
a whole test module. Every path it touches lives under the directory it is given.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from oneiric_session import mcp_compat
from oneiric_session.mcp_compat import AnswerView

SERVE = [sys.executable, "-m", "oneiric_session", "serve"]


def isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment whose HOME and XDG directories are all under `home`."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_RUNTIME_DIR": str(home / "run"),
    }
    env.update(extra or {})
    return env


def start_event(**overrides: Any) -> dict[str, Any]:
    """A valid `track_session_start` argument set, as an admin shell would send it."""
    event: dict[str, Any] = {
        "event_version": "1.0",
        "event_id": str(uuid.uuid4()),
        "event_type": "session_start",
        "component_name": "probe",
        "shell_type": "ProbeShell",
        "timestamp": "2026-02-06T12:34:56.789Z",
        "pid": 4242,
        "user": {"username": "tester", "home": "/home/tester"},
        "hostname": "testhost",
        "environment": {
            "python_version": "3.11.7",
            "platform": "Linux-x86_64",
            "cwd": "/nonexistent/project",
        },
        "metadata": {"component_version": "1.2.3", "adapters": []},
    }
    event.update(overrides)
    return event


def end_event(session_id: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "session_id": session_id,
        "timestamp": "2026-02-06T12:35:06.789Z",
        "event_type": "session_end",
        "metadata": {"exit_reason": "user_exit", "duration_seconds": 10.0},
    }
    event.update(overrides)
    return event


def text_of(result: AnswerView) -> str:
    assert len(result.content) == 1, result.content
    return result.content[0].text  # type: ignore[union-attr]


def structured_answer(result: AnswerView) -> dict[str, Any]:
    """The answer dict, after checking it came as the real server sends it: both forms, equal."""
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert json.loads(text_of(result)) == result.structured_content
    return result.structured_content


class ServerConnection:
    """One open MCP session to a server, callable from synchronous code."""

    def __init__(self, portal: BlockingPortal, client: mcp_compat.ClientHandle) -> None:
        self._portal = portal
        self._client = client

    def call(self, tool: str, arguments: dict[str, Any]) -> AnswerView:
        """The SDK's own `call_tool` (it lists the tools first), its answer read on either SDK."""
        return mcp_compat.answer_view(self._portal.call(self._client.call_tool, tool, arguments))

    def list_tools(self) -> Any:
        return self._portal.call(self._client.list_tools)

    def input_schemas(self) -> dict[str, dict[str, Any]]:
        return {tool.name: mcp_compat.tool_input_schema(tool) for tool in self.list_tools().tools}


@contextmanager
def connect(
    *,
    home: Path,
    db: Path | None = None,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    errlog: Path | None = None,
) -> Iterator[ServerConnection]:
    """Connect to `url`, or launch the bundled server over stdio on `db` (stderr to `errlog`)."""
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        if url is not None:
            transport = mcp_compat.http_transport(url)
        else:
            assert db is not None
            err = stack.enter_context(open(errlog or home / "server.stderr", "a"))
            transport = mcp_compat.stdio_transport(
                SERVE[0], [*SERVE[1:], "--db", str(db)], env=isolated_env(home, env), errlog=err
            )
        client = stack.enter_context(portal.wrap_async_context_manager(mcp_compat.open_client(transport)))
        yield ServerConnection(portal, client)
