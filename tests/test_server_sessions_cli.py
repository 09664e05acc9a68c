"""`oneiric-session sessions [--db PATH] [--json]`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.cli import main
from oneiric_session.server.store import LISTED_COLUMNS, NewSession, SessionEnding, SessionStore


def record(db: Path) -> None:
    store = SessionStore(db)
    try:
        for n, shell_type in enumerate(["PlainShell", "Evil\nShell"]):
            store.record_start(
                NewSession(
                    event_id=f"e{n}",
                    base_session_id=f"comp-2026020{n + 1}-120000",
                    component_name="comp",
                    shell_type=shell_type,
                    hostname="h",
                    pid=10 + n,
                    user={"username": "u", "home": "/h"},
                    environment={"python_version": "3", "platform": "p", "cwd": "/c"},
                    started_at=f"2026-02-0{n + 1}T12:00:00Z",
                    metadata={},
                )
            )
        store.record_end(
            SessionEnding(
                "comp-20260201-120000",
                ended_at="2026-02-01T12:00:42.5Z",
                exit_reason="user_exit",
                duration_seconds=None,
                metadata={},
            )
        )
    finally:
        store.close()


def test_json_lists_every_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.sqlite3"
    record(db)
    assert main(["sessions", "--db", str(db), "--json"]) == 0
    sessions = json.loads(capsys.readouterr().out)
    assert [list(row) for row in sessions] == [list(LISTED_COLUMNS)] * 2
    assert sessions[0] == {
        "session_id": "comp-20260201-120000",
        "component_name": "comp",
        "shell_type": "PlainShell",
        "started_at": "2026-02-01T12:00:00Z",
        "ended_at": "2026-02-01T12:00:42.5Z",
        "status": "ended",
        "exit_reason": "user_exit",
        "duration_seconds": 42.5,
    }
    assert (sessions[1]["status"], sessions[1]["ended_at"]) == ("open", None)


def test_table_keeps_one_line_per_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.sqlite3"
    record(db)
    assert main(["sessions", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(LISTED_COLUMNS)
    assert len(lines) == 3
    assert lines[1].split() == [
        "comp-20260201-120000",
        "comp",
        "PlainShell",
        "2026-02-01T12:00:00Z",
        "2026-02-01T12:00:42.5Z",
        "ended",
        "user_exit",
        "42.5",
    ]
    assert "Evil\\nShell" in lines[2]


def test_default_database_and_no_database_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --db: $ONEIRIC_SESSION_DB, else the XDG data dir; listing never creates the file."""
    monkeypatch.delenv("ONEIRIC_SESSION_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    default = tmp_path / "data" / "oneiric-session" / "sessions.sqlite3"
    assert main(["sessions", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["sessions"]) == 0
    assert capsys.readouterr().out == f"no sessions recorded in {default}\n"
    assert not default.exists()
    record(tmp_path / "env.sqlite3")
    monkeypatch.setenv("ONEIRIC_SESSION_DB", str(tmp_path / "env.sqlite3"))
    assert main(["sessions", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_listing_and_the_serve_command_line_do_not_import_mcp() -> None:
    """`sessions` and argument checks stay light: only the running server loads the SDK."""
    code = (
        "import sys\n"
        "import oneiric_session.server, oneiric_session.server.store\n"
        "import oneiric_session.cli.serve, oneiric_session.cli.sessions\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'pydantic', 'jwt', 'anyio'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
