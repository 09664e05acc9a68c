"""Hardening item 5 for `who` / `last`: hostile names recorded by a server never reach the terminal raw.

The names go in through the bundled server's own tools over Streamable HTTP (shell type, host, user,
and the one component name its pattern lets through: a trailing newline), and through a foreign
writer of the same database (any component name and session id, as another server could store).
`who` and `last` read them back from the database and from the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.spool import Spool
from tests.support.delivery import WAIT_SECONDS, wait_until
from tests.support.faults import isolated_env
from tests.support.http_server import HttpServer, free_port, listing_server
from tests.support.server_process import connect, end_event, start_event, structured_answer

CLI = [sys.executable, "-m", "oneiric_session"]
SHELL = "\x1b[31mRedShell\x1b[0m\r\x00\u202eevil\x9b2J"
HOST = "\x1b]0;pwned\x07host-\x1b[2J\r\n"
USER = "\x1b[1;1Hroot\u2066\u202d"
COMPONENT = "comp\x1b[31m\r\x00\u202e"
SESSION_ID = "sid\x1b[2J\r\x00\u2067-1"
# What must never be printed raw: escapes (7-bit and C1), CR, NUL, bidi overrides and isolates.
UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("hostile")
    server = HttpServer(root)
    server.start()
    with connect(home=root / "client", url=server.url) as client:
        event = start_event(shell_type=SHELL, hostname=HOST, user={"username": USER, "home": "/h"})
        assert structured_answer(client.call("track_session_start", event))["status"] == "tracked"
        # The component pattern is `re.match(r"^[a-zA-Z0-9_-]+$")`: a trailing newline passes it.
        newline = start_event(component_name="evil\n", shell_type="Plain", timestamp="2026-02-06T12:40:00Z")
        answer = structured_answer(client.call("track_session_start", newline))
        assert answer["status"] == "tracked" and "\n" in answer["session_id"]
        ended = end_event(answer["session_id"], metadata={"exit_reason": "\x1b[32mabnormal\r"})
        assert structured_answer(client.call("track_session_end", ended))["status"] == "ended"
    # A foreign writer of the same database: any component name and session id.
    with sqlite3.connect(server.db) as db:
        db.execute(
            "INSERT INTO sessions (session_id, event_id, component_name, shell_type, hostname, pid, user,"
            " environment, started_at, start_metadata, recorded_at) VALUES (?, 'e-foreign', ?, 'S', 'h', 9,"
            " '{\"username\":\"u\"}', '{}', '2026-02-06T12:50:00Z', '{}', '2026-02-06T12:50:00Z')",
            (SESSION_ID, COMPONENT),
        )
    db.close()
    try:
        yield server
    finally:
        server.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300"}
    env.pop("SESSION_BUDDY_TOKEN", None)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=WAIT_SECONDS)


@pytest.mark.hardening(
    item=5,
    fault="hostile names shown by who/last: ANSI escapes, CR, NUL and bidi overrides in component, "
    "shell type, host, user, exit reason and session id, through the server",
    outcome="every cell goes through safetext: one inert line per session; --json keeps them exact, "
    "as ASCII escapes",
)
@pytest.mark.parametrize("via", ["db", "url"])
@pytest.mark.parametrize("command", ["who", "last"])
def test_hostile_names_never_reach_the_terminal_raw(hostile: HttpServer, via: str, command: str) -> None:
    source = ["--db", str(hostile.db)] if via == "db" else ["--url", hostile.url]
    table = run(command, *source)
    assert table.returncode == 0, table.stderr
    assert not UNSAFE.search(table.stdout), repr(table.stdout)
    assert not UNSAFE.search(table.stderr), repr(table.stderr)
    lines = table.stdout.splitlines()
    assert len(lines) == 1 + (2 if command == "who" else 3)  # header and one line per session
    assert "RedShell" in table.stdout and "root" in table.stdout and "host-" in table.stdout
    if command == "last":
        assert "comp" in table.stdout and "sid" in table.stdout and "evil" in table.stdout

    raw = run(command, *source, "--json")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.isascii() and not UNSAFE.search(raw.stdout)
    rows = json.loads(raw.stdout)
    assert {row["shell_type"] for row in rows} >= {SHELL}
    assert {row["hostname"] for row in rows} >= {HOST}
    if command == "last":
        assert SESSION_ID in {row["session_id"] for row in rows}
        assert COMPONENT in {row["component_name"] for row in rows}


def run_as_a_user_with_a_spool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command run by a user whose spool exists (so `who` looks up how idle each session is)."""
    env = {**os.environ, **isolated_env(root), "COLUMNS": "300"}
    env.pop("SESSION_BUDDY_TOKEN", None)
    with Spool(Path(env["XDG_STATE_HOME"]) / "oneiric-session" / "spool.sqlite3") as spool:
        spool.meta_set("made-by", "test")  # the first write makes the file
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=WAIT_SECONDS, cwd=root
    )


def test_a_server_repeating_its_page_cursor_ends_the_listing(tmp_path: Path) -> None:
    """`who -n 0` followed the cursor for ever, growing (1.2 GB within 40 s)."""
    with listing_server(tmp_path, LISTING_MODE="repeat_cursor") as url:
        result = run_as_a_user_with_a_spool(tmp_path, "who", "--url", url, "-n", "0")
    assert result.returncode == 1, result
    assert "page cursor a second time" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "row"),
    [
        ("who", {"session_id": ["s-1"]}),
        ("who", {"pid": {"n": 1}}),
    ],
    ids=["session_id_a_list", "pid_an_object"],
)
def test_a_listed_session_of_any_shape_is_shown(tmp_path: Path, command: str, row: dict[str, Any]) -> None:
    """Values a server should not send (a list for a session id, an object for a pid) raised
    TypeError out of `who`: a traceback."""
    with listing_server(tmp_path, LISTING_ROW=json.dumps(row)) as url:
        result = run_as_a_user_with_a_spool(tmp_path, command, "--url", url)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # the header and the session


def test_a_duration_no_clock_can_show_is_a_dash() -> None:
    """An infinite duration (a REAL column of a database another program wrote) raised OverflowError."""
    from oneiric_session.cli.who import clock

    assert [clock(v) for v in (float("inf"), float("-inf"), float("nan"), "5", True, 3725.9)] == [
        "-",
        "-",
        "-",
        "-",
        "-",
        "1:02:05",
    ]


def test_what_the_mcp_sdk_logs_about_a_server_reaches_the_terminal_safe(tmp_path: Path) -> None:
    """The SDK logs the server's Content-Type where nobody configured logging: Python's last-resort
    handler printed it raw (C1 escapes and a bidi override from the server reached the terminal)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "support" / "raw_http_server.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        wait_until(accepting, what="the raw server")
        result = run_as_a_user_with_a_spool(tmp_path, "who", "--url", f"http://127.0.0.1:{port}/mcp")
    finally:
        server.kill()
        server.wait(WAIT_SECONDS)
    assert result.returncode == 1, result
    assert "Unexpected content type" in result.stderr  # the SDK's line, shown, but safe
    assert not UNSAFE.search(result.stderr), ascii(result.stderr)
