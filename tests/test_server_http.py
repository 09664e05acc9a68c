"""`oneiric-session serve --http`: Streamable HTTP at /mcp, loopback unless told otherwise."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
import pytest

from oneiric_session.cli.serve import Bind, parse_bind
from oneiric_session.errors import ConfigError
from tests.support.server_process import (
    SERVE,
    ServerConnection,
    connect,
    end_event,
    isolated_env,
    start_event,
    structured_answer,
    text_of,
)

SECRET = "http-test-secret-" + "0123456789abcdef" * 3
LISTENING = re.compile(r"listening on (http://\S+/mcp)")


@contextmanager
def http_server(home: Path, *args: str, secret: str | None = None) -> Iterator[str]:
    """Start `serve --http ARGS`, yield its URL (read from stderr), and check it stops cleanly on SIGTERM."""
    env = isolated_env(home, {"SESSION_BUDDY_SECRET": secret} if secret else None)
    process = subprocess.Popen(
        [*SERVE, "--db", str(home / "http.sqlite3"), "--http", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = LISTENING.search(line)
        assert match, line + process.stderr.read()
        yield match.group(1)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert stdout == ""
    finally:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http-home")


@pytest.fixture(scope="module")
def url(home: Path) -> Iterator[str]:
    with http_server(home, "127.0.0.1:0") as server_url:
        yield server_url


@pytest.fixture(scope="module")
def server(home: Path, url: str) -> Iterator[ServerConnection]:
    with connect(home=home, url=url) as connection:
        yield connection


def test_round_trip_over_http(server: ServerConnection, url: str) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/mcp", url)
    started = structured_answer(server.call("track_session_start", start_event(component_name="web")))
    assert started == {"session_id": "web-20260206-123456", "status": "tracked", "error": None}
    ended = structured_answer(server.call("track_session_end", end_event(started["session_id"])))
    assert ended["status"] == "ended"
    assert structured_answer(server.call("track_session_end", end_event("nobody")))["status"] == "not_found"


def test_validation_answers_are_the_same_over_http(server: ServerConnection) -> None:
    result = server.call("track_session_start", start_event(extra_field=1))
    assert result.is_error and "1 validation error for call[track_session_start]" in text_of(result)
    refused = structured_answer(server.call("track_session_start", start_event(pid=0)))
    assert refused["status"] == "error"


def test_several_clients_at_once_each_session_recorded_once(home: Path, url: str) -> None:
    """Separate connections (as separate hosts would open) race on one second: all ids distinct."""
    ids: list[str] = []
    events = [[start_event(component_name="fleet") for _ in range(5)] for _ in range(3)]

    def send(batch: list[dict[str, object]]) -> None:
        with connect(home=home, url=url) as connection:
            for event in batch + batch:  # every start sent twice: the second is a replay
                ids.append(structured_answer(connection.call("track_session_start", event))["session_id"])

    threads = [threading.Thread(target=send, args=(batch,)) for batch in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 30
    assert len(set(ids)) == 15


def test_remote_bind_with_flag_and_secret_requires_tokens(tmp_path: Path) -> None:
    """0.0.0.0 is served with --allow-remote and a secret, and then every call needs a token."""
    with http_server(tmp_path, "0.0.0.0:0", "--allow-remote", secret=SECRET) as url:
        port = url.rsplit(":", 1)[1]
        with connect(home=tmp_path, url=f"http://127.0.0.1:{port}") as connection:
            refused = connection.call("track_session_start", start_event())
            assert refused.is_error and "Authentication failed" in text_of(refused)
            now = int(time.time())
            claims = {"iss": "dhara", "aud": "session-buddy", "iat": now, "exp": now + 60}
            good = jwt.encode(claims, SECRET, algorithm="HS256")
            answer = structured_answer(connection.call("track_session_start", start_event(token=good)))
            assert answer["status"] == "tracked"


@pytest.mark.parametrize(
    ("args", "secret"),
    [
        (["0.0.0.0:8765"], None),
        (["0.0.0.0:8765", "--allow-remote"], None),
        (["0.0.0.0:8765"], SECRET),
        (["example.com:8765", "--allow-remote"], None),
    ],
    ids=["neither", "flag-only", "secret-only", "hostname-flag-only"],
)
def test_non_loopback_bind_is_refused_without_flag_and_secret(
    tmp_path: Path, args: list[str], secret: str | None
) -> None:
    env = isolated_env(tmp_path, {"SESSION_BUDDY_SECRET": secret} if secret else None)
    result = subprocess.run(
        [*SERVE, "--http", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "is not a loopback address" in result.stderr
    assert "--allow-remote" in result.stderr and "SESSION_BUDDY_SECRET" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before any database was opened


@pytest.mark.parametrize(
    ("text", "bind", "loopback"),
    [
        ("127.0.0.1:8765", Bind("127.0.0.1", 8765), True),
        ("127.0.0.9:0", Bind("127.0.0.9", 0), True),
        ("localhost:80", Bind("localhost", 80), True),
        ("[::1]:8765", Bind("::1", 8765), True),
        ("0.0.0.0:8765", Bind("0.0.0.0", 8765), False),
        ("[::]:8765", Bind("::", 8765), False),
        ("192.168.1.5:1", Bind("192.168.1.5", 1), False),
        ("my-host:1", Bind("my-host", 1), False),
    ],
)
def test_bind_parsing(text: str, bind: Bind, loopback: bool) -> None:
    assert parse_bind(text) == bind
    assert parse_bind(text).is_loopback is loopback


@pytest.mark.parametrize("text", ["8765", ":8765", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "[]:1"])
def test_bad_bind_values_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_bind(text)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, "--db", str(tmp_path / "s.sqlite3"), "--http", f"127.0.0.1:{port}"],
            env=isolated_env(tmp_path),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"--http 127.0.0.1:{port}: cannot listen there: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
