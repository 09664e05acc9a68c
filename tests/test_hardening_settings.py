"""Hardening (issue 13), items 6 and 14: settings files that are FIFOs, huge, or alias bombs.

Real FIFOs, real files, and a real shell process (the drop-in emitter, as an admin shell starts it)
run with a timeout: a hang is a failure, and tracking must go off with one log line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.faults import isolated_env

# A shell: resolve the tracker, start a session, then "show the prompt".
SHELL = textwrap.dedent(
    """
    import asyncio
    from oneiric_session import SessionEventEmitter
    emitter = SessionEventEmitter(component_name="probe")
    asyncio.run(emitter.emit_session_start("ProbeShell", {}))
    print("prompt", type(emitter._get_tracker()).__name__, flush=True)
    """
)
# A hang is judged by this; a fixed shell answers in the time of its start-up.
SHELL_TIMEOUT_SECONDS = 60
# Well under what the unfixed shell took on a 60 MB file (over 30 s), well over a loaded start-up.
PROMPT_SECONDS = 20


def run_shell(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **isolated_env(tmp_path),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path / "settings"),
        **env,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SHELL],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_SECONDS,
        cwd=tmp_path,
    )
    return result, time.monotonic() - started


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oneiric_session", "--settings", str(tmp_path / "settings"), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **isolated_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_SECONDS,
        cwd=tmp_path,
    )


def assert_tracking_off_once(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "prompt NoopTracker", result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "session tracking is off" in line]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    directory = tmp_path / "settings"
    directory.mkdir()
    return directory


@pytest.mark.hardening(
    item=6,
    fault="settings/adapters.yml is a FIFO nobody writes to",
    outcome="a configuration error, never a wait: the shell logs one line and tracking is off; "
    "`status` exits 2 naming the FIFO",
)
def test_a_fifo_as_adapters_yml(tmp_path: Path, settings: Path) -> None:
    os.mkfifo(settings / "adapters.yml")
    result, _ = run_shell(tmp_path)
    assert_tracking_off_once(result, "adapters.yml", "FIFO")
    status = cli(tmp_path, "status")
    assert status.returncode == 2 and "FIFO" in status.stderr, status.stdout + status.stderr


@pytest.mark.hardening(
    item=6,
    fault="the file $ONEIRIC_CONFIG names is a FIFO nobody writes to",
    outcome="a configuration error, never a wait: the shell logs one line and tracking is off; "
    "`status` exits 2 naming the FIFO",
)
def test_a_fifo_as_oneiric_config(tmp_path: Path, settings: Path) -> None:
    fifo = tmp_path / "oneiric-config.yml"
    os.mkfifo(fifo)
    result, _ = run_shell(tmp_path, ONEIRIC_CONFIG=str(fifo))
    assert_tracking_off_once(result, str(fifo), "FIFO")
    status = cli(tmp_path, "status", ONEIRIC_CONFIG=str(fifo))
    assert status.returncode == 2 and "FIFO" in status.stderr, status.stdout + status.stderr


@pytest.mark.hardening(
    item=6,
    fault="token_file is a FIFO nobody writes to (a stale `<(pass show ...)`)",
    outcome="a configuration error, never a wait: the shell logs one line and tracking is off; "
    "`status` and `check` exit 2 naming the FIFO",
)
def test_a_fifo_as_token_file(tmp_path: Path, settings: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    (settings / "adapters.yml").write_text(
        f"adapters:\n  provider_settings:\n    session-buddy:\n      token_file: {fifo}\n"
    )
    result, _ = run_shell(tmp_path)
    assert_tracking_off_once(result, str(fifo), "FIFO")
    for command in ("status", "check"):
        status = cli(tmp_path, command)
        assert status.returncode == 2 and "FIFO" in status.stderr, status.stdout + status.stderr


def _alias_bomb(levels: int) -> str:
    """server.env holding nine-fold nested aliases, merged in through a merge key: 9**levels values."""
    lines = [
        "adapters:",
        "  provider_settings:",
        "    session-buddy:",
        "      server:",
        "        env:",
        "          l0: &l0 [x, x, x, x, x, x, x, x, x]",
    ]
    lines += [f"          l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    lines.append(f"          <<: {{laughs: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.hardening(
    item=14,
    fault='a YAML "billion laughs" in server.env (nine-fold nested aliases, merged in by a merge key)',
    outcome="refused past 100,000 values: the shell logs one configuration error line, tracking is "
    "off, the prompt comes at once",
)
def test_an_alias_bomb_in_server_env(tmp_path: Path, settings: Path) -> None:
    # 9**6 values: past the budget, yet small enough that the unfixed loader does not exhaust memory.
    (settings / "adapters.yml").write_text(_alias_bomb(6))
    result, elapsed = run_shell(tmp_path)
    assert_tracking_off_once(result, "adapters.yml", "aliases expand to more than 100000")
    assert elapsed < PROMPT_SECONDS


@pytest.mark.hardening(
    item=14,
    fault="a 60 MB settings/adapters.yml",
    outcome="refused by its size (over 1 MiB) before it is read: one configuration error line, "
    "tracking off, the prompt at once; `status` exits 2 naming the size",
)
def test_a_60_mb_adapters_yml(tmp_path: Path, settings: Path) -> None:
    line = "# " + "x" * 97 + "\n"
    with open(settings / "adapters.yml", "w") as file:
        file.write("session_tracker: session-buddy\n")
        file.write(line * (60 * 1024 * 1024 // len(line)))
    result, elapsed = run_shell(tmp_path)
    assert_tracking_off_once(result, "adapters.yml", "more than the 1048576 allowed")
    assert elapsed < PROMPT_SECONDS
    status = cli(tmp_path, "status")
    assert status.returncode == 2 and "1048576" in status.stderr, status.stderr
