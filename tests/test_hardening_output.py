"""Hardening (issue 13), item 5: what a server or a client sends is printed terminal-safe, and capped.

Real servers over real stdio: the fault server answers session ids holding escapes or a million
characters; a raw MCP client (not ours, which sanitizes) records a hostile shell_type and exit reason
in the bundled server; then the real commands print them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.agent import DeliveryAgent
from oneiric_session.spool import Spool
from oneiric_session.tracking.events import build_start_event
from oneiric_session.tracking.limits import Limits
from tests.support.faults import fault_destination, fault_server_env, isolated_env
from tests.support.server_process import connect, end_event, start_event

# What must never reach a terminal from someone else's text.
FORBIDDEN = ("\x1b", "\x9b", "\x07", "\x08", "\r", "\x00", "\u202e", "\u2066", "\u200f")
HOSTILE = "\x1b[2J\x1b]0;owned\x07Evil\x9b31m\x08\r\u202eesrever\x00Shell"


def assert_terminal_safe(text: str) -> None:
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)
        for char in FORBIDDEN:
            assert char not in line, repr(line)


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    settings = tmp_path / "settings"
    settings.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "oneiric_session", "--settings", str(settings), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **isolated_env(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.hardening(
    item=5,
    fault="a server answers a session id holding ANSI escapes, OSC, BEL, BS, CR, NUL and a bidi override",
    outcome="`check` prints it with every control and escape removed (each line printable)",
)
def test_check_prints_a_hostile_session_id_safely(tmp_path: Path) -> None:
    result = cli(tmp_path, "check", "--timeout", "60", env=fault_server_env("id_escapes"))
    assert result.returncode == 0, result.stderr
    assert "delivered: session" in result.stdout and "oneiric-session-check-" in result.stdout
    assert_terminal_safe(result.stdout + result.stderr)


@pytest.mark.hardening(
    item=5,
    fault="a server answers a start with a 1,000,000-character session id",
    outcome="refused (more than 256 characters): the start is kept as a dead letter with the reason, "
    "never stored or sent back; `spool list` shows it safely",
)
async def test_a_huge_session_id_is_a_dead_letter_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    destination = fault_destination(tmp_path, "huge_id")
    event = build_start_event(
        component_name="probe",
        shell_type="ProbeShell",
        metadata=None,
        limits=Limits(),
        report_cwd=str(tmp_path),
    )
    with Spool(path) as spool:
        spool.append_start(
            "local-huge", destination, event, pid=os.getpid(), pid_start_time=None, boot_id=None
        )
        result = await DeliveryAgent(spool).replay()
        dead = spool.list_dead()
    assert result.dead_lettered == 1 and len(dead) == 1, result
    assert dead[0].server_session_id is None
    assert "1000000 characters (more than 256)" in (dead[0].dead_reason or "")
    listing = cli(tmp_path, "spool", "list", "--spool", str(path))
    assert "dead" in listing.stdout and "more than 256" in listing.stdout, listing.stdout
    assert len(listing.stdout) < 5000
    assert_terminal_safe(listing.stdout)


@pytest.mark.hardening(
    item=5,
    fault="a client records a shell_type and an exit reason holding ESC, CSI (\\x9b), BEL, BS, CR, NUL, bidi",
    outcome="`sessions` and `sessions --json` print them with every control neutralised",
)
def test_sessions_prints_hostile_client_text_safely(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    (tmp_path / "server-home").mkdir()
    with connect(home=tmp_path / "server-home", db=db) as server:
        answer = server.call("track_session_start", start_event(shell_type=HOSTILE))
        session_id = answer.structured_content["session_id"]  # type: ignore[index]
        server.call(
            "track_session_end",
            end_event(session_id, metadata={"exit_reason": HOSTILE, "duration_seconds": 1.0}),
        )
    table = cli(tmp_path, "sessions", "--db", str(db))
    assert table.returncode == 0, table.stderr
    assert "Evil" in table.stdout and "esreverShell" in table.stdout, table.stdout
    assert_terminal_safe(table.stdout)
    listing = cli(tmp_path, "sessions", "--db", str(db), "--json")
    assert_terminal_safe(listing.stdout)
    assert json.loads(listing.stdout)[0]["shell_type"] == HOSTILE  # stored as sent, escaped in JSON
