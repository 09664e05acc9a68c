"""`oneiric-session shell` in a real pseudo-terminal: every way out records the session's end.

The child is the real CLI with provider `file` selected through ONEIRIC_SESSION_PROVIDER
(a test provider registered by `tests.support.file_tracker.install`), so the parent can read
what was recorded after the child is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.support.file_tracker import child_env, read_records, sessions
from tests.support.pty_driver import PtyProcess

CLI = (
    "import sys; from tests.support.file_tracker import install; install(); "
    "from oneiric_session.cli import main; sys.exit(main())"
)
PROMPT = {"stdlib": r">>> ", "ipython": r"In \[\d+\]: "}
# Typed into the shell: breaks the REPL's own input machinery, so the exception escapes the REPL.
BREAK_THE_REPL = {
    "stdlib": "import builtins; builtins.input = lambda *a: 1/0",
    "ipython": "get_ipython().prompt_for_code = lambda: 1/0",
}
REPLS = [
    "stdlib",
    pytest.param(
        "ipython", marks=pytest.mark.skipif(find_spec("IPython") is None, reason="IPython not installed")
    ),
]


@pytest.fixture
def open_shell(tmp_path: Path) -> Iterator:
    started: list[PtyProcess] = []

    def open_(repl: str, *args: str, **env: str) -> PtyProcess:
        argv = [sys.executable, "-c", CLI, "shell", "--repl", repl, *args]
        # No cursor-position queries: nobody answers them in a test.
        environment = child_env(tmp_path, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", **env)
        shell = PtyProcess(argv, env=environment, cwd=tmp_path)
        started.append(shell)
        shell.expect(PROMPT[repl])
        return shell

    yield open_
    for shell in started:
        shell.close()


def one_session(tmp_path: Path) -> dict:
    (session,) = sessions(tmp_path / "record.jsonl")
    return session


def evaluate(shell: PtyProcess, repl: str) -> None:
    """Type an expression, read its value, wait for the next prompt."""
    shell.sendline("6 * 7")
    shell.expect(r"\b42\b")
    shell.expect(PROMPT[repl])


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize("way_out", ["ctrl_d", "exit"])
def test_leaving_the_shell_records_user_exit(open_shell, tmp_path: Path, repl: str, way_out: str) -> None:
    shell = open_shell(repl, "--component", "billing")
    evaluate(shell, repl)
    if way_out == "ctrl_d":
        shell.send_eof()
    else:
        shell.sendline("exit()")
    assert shell.wait() == 0
    assert "Traceback" not in shell.text
    session = one_session(tmp_path)
    assert (session["component_name"], session["shell_type"]) == ("billing", "AdminShell")
    assert session["metadata"]["adapters"] == []
    (end,) = session["ends"]
    assert end["exit_reason"] == "user_exit"
    assert end["duration_seconds"] >= 0
    assert read_records(tmp_path / "record.jsonl")[-1]["op"] == "close"


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize(("signum", "reason"), [(signal.SIGTERM, "sigterm"), (signal.SIGHUP, "sighup")])
def test_a_signal_at_the_prompt_records_its_reason_and_still_ends_the_process(
    open_shell, tmp_path: Path, repl: str, signum: int, reason: str
) -> None:
    shell = open_shell(repl)
    evaluate(shell, repl)
    shell.kill(signum)
    assert shell.wait() == -signum  # dies of the signal, as it would without tracking
    assert "Traceback" not in shell.text
    (end,) = one_session(tmp_path)["ends"]
    assert end["exit_reason"] == reason
    assert end["duration_seconds"] >= 0


@pytest.mark.parametrize("repl", REPLS)
def test_sigterm_while_code_runs_ends_the_shell(open_shell, tmp_path: Path, repl: str) -> None:
    """Both REPLs catch exceptions raised in user code; the shell must leave all the same."""
    shell = open_shell(repl)
    busy = "import time; print('sleep' + 'ing'); time.sleep(60)"  # sleep-ok: the signal ends it
    shell.sendline(busy)
    shell.expect("sleeping")
    shell.kill(signal.SIGTERM)
    assert shell.wait() == -signal.SIGTERM
    (end,) = one_session(tmp_path)["ends"]
    assert end["exit_reason"] == "sigterm"


@pytest.mark.parametrize("repl", REPLS)
def test_closing_the_terminal_records_sighup(open_shell, tmp_path: Path, repl: str) -> None:
    """A real hang-up: the terminal's master side closes and the kernel sends SIGHUP."""
    shell = open_shell(repl)
    evaluate(shell, repl)
    shell.hang_up()
    assert shell.wait() == -signal.SIGHUP
    (end,) = one_session(tmp_path)["ends"]
    assert end["exit_reason"] == "sighup"


@pytest.mark.parametrize("repl", REPLS)
def test_an_exception_escaping_the_repl_records_exception(open_shell, tmp_path: Path, repl: str) -> None:
    shell = open_shell(repl)
    shell.sendline(BREAK_THE_REPL[repl])
    assert shell.wait() == 1
    assert "ZeroDivisionError" in shell.text  # the traceback is shown, as Python shows it
    (end,) = one_session(tmp_path)["ends"]
    assert end["exit_reason"] == "exception"


def test_a_configuration_error_says_one_line_and_the_shell_opens(open_shell, tmp_path: Path) -> None:
    shell = open_shell("stdlib", ONEIRIC_SESSION_PROVIDER="no-such-provider")
    evaluate(shell, "stdlib")
    shell.send_eof()
    assert shell.wait() == 0
    lines = [line for line in shell.text.splitlines() if "session tracking is off" in line]
    assert len(lines) == 1 and "no-such-provider" in lines[0]
    assert "Traceback" not in shell.text
    assert not (tmp_path / "record.jsonl").exists()


@pytest.mark.parametrize("repl", REPLS)
def test_the_namespace_holds_app_and_helpers(open_shell, repl: str) -> None:
    shell = open_shell(repl)
    shell.sendline("print('app is', app)")
    shell.expect("app is None")
    shell.expect(PROMPT[repl])  # keys typed before the prompt is ready may be lost
    shell.send_eof()
    assert shell.wait() == 0


# -- end to end: provider session-buddy, its delivery agent, the bundled server -----------------


@pytest.fixture(scope="module")
def bundled_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One spool, agent and bundled server for the module: the agent stays warm between tests."""
    home = tmp_path_factory.mktemp("bundled")
    yield home
    from oneiric_session.agent.status import delivery_status
    from oneiric_session.wakeup import agent_holds_lock

    spool = home / "state" / "oneiric-session" / "spool.sqlite3"
    pid = delivery_status(spool)["agent_pid"]
    if pid:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while agent_holds_lock(spool) and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: waiting for the agent to stop
    assert not agent_holds_lock(spool), "the delivery agent did not stop"


def delivered(db: Path, component: str, timeout: float = 60.0) -> dict:
    """The session of `component` once the bundled server has its end."""
    from oneiric_session.server.store import SessionStore

    deadline = time.monotonic() + timeout
    while True:
        if db.exists():
            store = SessionStore(db)
            try:
                found = [s for s in store.list_sessions() if s["component_name"] == component]
            finally:
                store.close()
            if found and found[0]["ended_at"]:
                assert len(found) == 1
                return found[0]
        assert time.monotonic() < deadline, f"no ended session for {component} at the bundled server"
        time.sleep(0.1)  # sleep-ok: polling the server's database for the agent's delivery


@pytest.mark.parametrize("repl", REPLS)
@pytest.mark.parametrize(
    ("way_out", "reason", "status"),
    [
        ("ctrl_d", "user_exit", 0),
        ("sigterm", "sigterm", -signal.SIGTERM),
        ("hang_up", "sighup", -signal.SIGHUP),
        ("exception", "exception", 1),
    ],
)
def test_the_session_reaches_the_bundled_server_with_its_end(
    bundled_home: Path, repl: str, way_out: str, reason: str, status: int
) -> None:
    component = f"pty-{repl}-{way_out}".replace("_", "-")
    db = bundled_home / "sessions.sqlite3"
    env = child_env(
        bundled_home,
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",
        ONEIRIC_SESSION_PROVIDER="session-buddy",
        ONEIRIC_SESSION_DB=str(db),
        ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS="30",
    )
    argv = [sys.executable, "-m", "oneiric_session", "shell", "--repl", repl, "--component", component]
    shell = PtyProcess(argv, env=env, cwd=bundled_home)
    try:
        shell.expect(PROMPT[repl])
        evaluate(shell, repl)
        if way_out == "ctrl_d":
            shell.send_eof()
        elif way_out == "sigterm":
            shell.kill(signal.SIGTERM)
        elif way_out == "hang_up":
            shell.hang_up()
        else:
            shell.sendline(BREAK_THE_REPL[repl])
        assert shell.wait() == status
    finally:
        shell.close()
    session = delivered(db, component)
    assert (session["shell_type"], session["status"], session["exit_reason"]) == (
        "AdminShell",
        "ended",
        reason,
    )
    assert session["duration_seconds"] >= 0
