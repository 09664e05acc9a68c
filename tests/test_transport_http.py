"""SessionBuddyClient over Streamable HTTP against the fault server run as a real HTTP subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session.errors import RejectedError, ServerUnavailableError
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.events import build_end_event, build_start_event
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport import SessionBuddyClient
from tests.support.faults import FAULT_SERVER, isolated_env, tool_calls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_destination(port: int) -> Destination:
    return Destination(
        transport="http", url=f"http://127.0.0.1:{port}/mcp", tuning=Tuning(attempts=1, connect_seconds=5.0)
    )


def serve_http(tmp_path: Path, modes: str = "") -> Iterator[int]:
    port = free_port()
    env = {**isolated_env(tmp_path), "FAULT_MODE": modes, "FAULT_RECORD": str(tmp_path / "record.jsonl")}
    env["PATH"] = "/usr/bin:/bin"
    server = subprocess.Popen(
        [sys.executable, FAULT_SERVER, "--http", f"127.0.0.1:{port}"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    "HTTP fault server did not start"
                )
                time.sleep(0.05)  # sleep-ok: waiting for the server to listen
        yield port
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[int]:
    yield from serve_http(tmp_path)


@pytest.fixture
def refusing_http_server(tmp_path: Path) -> Iterator[int]:
    yield from serve_http(tmp_path, "status_error")


async def test_http_round_trip(tmp_path: Path, http_server: int) -> None:
    limits = Limits()
    async with SessionBuddyClient(http_destination(http_server), token=lambda: "tok") as client:
        session_id = await client.start_session(
            build_start_event(
                component_name="web", shell_type="T", metadata=None, limits=limits, report_cwd="/tmp"
            )
        )
        assert session_id.startswith("web-")
        end = build_end_event(
            session_id=session_id, exit_reason="user_exit", duration_seconds=1, metadata=None, limits=limits
        )
        assert await client.end_session(end) == "ended"
    start_call, end_call = tool_calls(tmp_path)
    assert start_call["tool"] == "track_session_start" and start_call["arguments"]["token"] == "tok"
    assert end_call["arguments"]["session_id"] == session_id


async def test_http_refusal_is_rejected(refusing_http_server: int) -> None:
    async with SessionBuddyClient(http_destination(refusing_http_server)) as client:
        with pytest.raises(RejectedError, match="Path does not exist"):
            await client.start_session(
                build_start_event(component_name="web", shell_type="T", metadata=None, limits=Limits())
            )


async def test_nothing_listening_is_server_unavailable() -> None:
    async with SessionBuddyClient(http_destination(free_port())) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            await client.start_session(
                build_start_event(component_name="web", shell_type="T", metadata=None, limits=Limits())
            )
    assert time.monotonic() - started < 5.0
