"""`oneiric-session check` as a real command: bundled server by default, each failure with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.faults import fault_server_env, isolated_env

TOKEN = "tok-check-secret-value"


def run_check(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    settings = tmp_path / "settings"
    settings.mkdir(exist_ok=True)
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **isolated_env(tmp_path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "oneiric_session", "--settings", str(settings), "check", *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_with_no_configuration_the_bundled_server_answers(tmp_path: Path) -> None:
    """A fresh machine: the bundled server is launched, the session recorded and ended."""
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("delivered: session oneiric-session-check-")
    listing = subprocess.run(
        [sys.executable, "-m", "oneiric_session", "sessions", "--json"],
        env={"PATH": os.environ.get("PATH", ""), **isolated_env(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    session_id = result.stdout.split()[2]
    assert session_id in listing.stdout


def test_json_output(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["end_status"] == "ended"
    assert report["session_id"].startswith("oneiric-session-check-")
    assert report["start_seconds"] >= 0 and report["end_seconds"] >= 0


@pytest.mark.parametrize(
    ("modes", "kind", "words"),
    [
        ("auth_wrapped", "authentication_failed", "refused the token"),
        ("validation_error", "rejected", "1 validation error"),
        ("status_error", "rejected", "Path does not exist"),
    ],
)
def test_refusals_exit_1_with_the_servers_reason(tmp_path: Path, modes: str, kind: str, words: str) -> None:
    result = run_check(tmp_path, "--json", env={**fault_server_env(modes), "SESSION_BUDDY_TOKEN": TOKEN})
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["error"] == kind and words in report["reason"]
    assert TOKEN not in result.stdout + result.stderr


def test_missing_server_exits_1(tmp_path: Path) -> None:
    result = run_check(tmp_path, env={"ONEIRIC_SESSION_SERVER__COMMAND": str(tmp_path / "no-such-server")})
    assert result.returncode == 1
    assert "not delivered: server_unavailable: server command not found" in result.stderr


def test_a_hung_server_exits_1_after_the_timeout(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--timeout", "4", env=fault_server_env("hang_call"))
    assert result.returncode == 1
    assert "not delivered: timed_out" in result.stderr


def test_configuration_error_exits_2(tmp_path: Path) -> None:
    result = run_check(tmp_path, env={"ONEIRIC_SESSION_TIMEOUTS__CALL_SECONDS": "-1"})
    assert result.returncode == 2
    assert "ONEIRIC_SESSION_TIMEOUTS__CALL_SECONDS" in result.stderr
    assert "Traceback" not in result.stderr
