"""Our SessionEventEmitter inside real Oneiric 0.17.0's own shells (CONTRACT.md section 2, issue 5).

Each test runs Oneiric's `AdminShell.start()` (a subclass naming its component, as
Oneiric expects) or `OneiricShell.start()` in a Python 3.13 subprocess, with
`oneiric.shell.session_tracker.SessionEventEmitter` and
`oneiric.shell.adapter.SessionEventEmitter` (bound at import, for OneiricShell)
replaced by ours. Oneiric then builds the emitter, awaits `emit_session_start`
inside `asyncio.run` (or `create_task` on a running loop, as `oneiric shell`
does), and ends the session from the daemon thread its atexit hook starts. The
provider is `session-buddy` with its default destination: the bundled server run
by the shell's own interpreter (Oneiric's venv), the agent spawned on demand.

IPython reads piped stdin with its simple prompt, the only way the running-loop
path works at all (in a terminal prompt_toolkit calls `asyncio.run()` inside the
running loop and crashes, see plan/oneiric-notes.md); one test uses a real
pseudo-terminal on the `asyncio.run` path, as a user at a terminal does.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.pty_driver import PtyProcess

# argv: shell ("admin" | "oneiric"), loop ("asyncio_run" | "running_loop"), marks file.
# Oneiric's code and ours run unchanged; the wrappers only time them. `repl` is marked
# in `_register_magics`, the last call before `start()` enters the REPL. The marks are
# written by the first atexit hook registered, so it runs after Oneiric's and ours.
DRIVER = """
import asyncio, atexit, json, sys, time

import oneiric.shell.adapter as adapter
import oneiric.shell.session_tracker as session_tracker
from oneiric.shell import AdminShell, OneiricShell

from oneiric_session import SessionEventEmitter

session_tracker.SessionEventEmitter = SessionEventEmitter
adapter.SessionEventEmitter = SessionEventEmitter
shell_kind, loop_kind, marks_path = sys.argv[1:4]
marks = {"shutdowns": []}

def write_marks():
    marks["hooks_done"] = time.monotonic()
    with open(marks_path, "w") as out:
        json.dump(marks, out)

atexit.register(write_marks)

def timed(name, method):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            marks[name] = time.perf_counter() - began
    return wrapper

def timed_async(name, method):
    async def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            marks[name] = time.perf_counter() - began
    return wrapper

# The whole start path (asyncio.run included), and the coroutine building and calling the emitter.
AdminShell._notify_session_start_async = timed("start_path", AdminShell._notify_session_start_async)
AdminShell._notify_session_start = timed_async("emitter", AdminShell._notify_session_start)
register_magics = AdminShell._register_magics

def mark_repl(self):
    register_magics(self)
    marks["repl"] = time.monotonic()

AdminShell._register_magics = mark_repl
shutdown = SessionEventEmitter.shutdown

def timed_shutdown(self, *args, **kwargs):
    began = time.perf_counter()
    try:
        return shutdown(self, *args, **kwargs)
    finally:
        marks["shutdowns"].append(time.perf_counter() - began)

SessionEventEmitter.shutdown = timed_shutdown

class DemoShell(AdminShell):
    def _get_component_name(self):
        return "demo"

def build():
    if shell_kind == "oneiric":
        from oneiric.core.config import load_settings
        return OneiricShell(load_settings())
    return DemoShell(app=None)

shells = []
marks["begin"] = time.monotonic()
if loop_kind == "running_loop":
    async def main():  # what `oneiric shell` does
        shells.append(build())
        shells[0].start()
    asyncio.run(main())
else:
    shells.append(build())
    shells[0].start()
marks["returned"] = time.monotonic()
marks["emitter_class"] = type(shells[0].session_tracker).__module__
"""

SHELLS = {"admin": ("demo", "DemoShell"), "oneiric": ("oneiric", "OneiricShell")}
# The session must span this deliberate pause typed into the REPL.
PAUSE_SECONDS = 0.3
PAUSE_CELL = f"import time; time.sleep({PAUSE_SECONDS})"  # sleep-ok: a session of known length
# Allowed over the noop baseline. What blocking on the server would cost: the connect
# timeout (20 s by default) at start, `exit_wait_seconds` (2 s) at exit. The interpreter's
# teardown after the atexit hooks is only reported: it is CPU-bound (more modules to free)
# and swings by seconds on a loaded machine; a hang there meets the subprocess timeout.
SLACK_SECONDS = 1.0
# Printed by CPython when an exception escapes an atexit hook, a thread or a __del__.
NOISE = ("Traceback", "Exception ignored")


class OneiricUser(Scene):
    """An isolated user whose shells run in Oneiric's venv, delivering to the default destination.

    The default destination is `<shell's python> -m oneiric_session serve`; its database is
    named by ONEIRIC_SESSION_DB, which the shell resolves into the server's `--db` argument.
    """

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        super().__init__(tmp_path, **settings)
        ipython = tmp_path / "ipython"
        self.env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), IPYTHONDIR=str(ipython))
        # IPython's history is an SQLite file written at exit: disk noise in the exit timings.
        (ipython / "profile_default").mkdir(parents=True)
        (ipython / "profile_default" / "ipython_config.py").write_text("c.HistoryManager.enabled = False\n")

    def use_bundled_server(self) -> None:
        self.env["ONEIRIC_SESSION_DB"] = str(self.db)


@dataclass
class ShellRun:
    stdout: str
    stderr: str
    marks: dict[str, Any]
    exited: float  # time.monotonic() when the process was seen gone (the same clock as the marks)

    @property
    def opening(self) -> float:
        """Seconds from calling start() to entering the REPL."""
        return self.marks["repl"] - self.marks["begin"]

    @property
    def exit_hooks(self) -> float:
        """Seconds from start() returning to the end of every atexit hook (Oneiric's and ours)."""
        return self.marks["hooks_done"] - self.marks["returned"]

    @property
    def closing(self) -> float:
        """Seconds from start() returning to the process being gone."""
        return self.exited - self.marks["returned"]


def run_shell(
    oneiric_python: Path,
    user: OneiricUser,
    shell: str,
    loop: str,
    cells: list[str],
    env: dict[str, str] | None = None,
) -> ShellRun:
    marks = user.root / "marks.json"
    marks.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(oneiric_python), "-c", DRIVER, shell, loop, str(marks)],
        input="".join(cell + "\n" for cell in cells),
        env={**user.env, **(env or {})},
        cwd=user.root,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    exited = time.monotonic()
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return ShellRun(proc.stdout, proc.stderr, json.loads(marks.read_text()), exited)


def assert_quiet(output: str) -> None:
    for noise in NOISE:
        assert noise not in output, output[-3000:]


def ended_sessions(user: OneiricUser) -> list[dict[str, Any]]:
    """The bundled server's sessions once every one it knows has ended (else [])."""
    sessions = user.sessions() if user.db.exists() else []
    return sessions if sessions and all(s["status"] == "ended" for s in sessions) else []


def delivered_session(user: OneiricUser) -> dict[str, Any]:
    """Wait (bounded) for the agent to deliver the start and the end; the one session recorded."""
    sessions = wait_until(lambda: ended_sessions(user), what="the session and its end at the server")
    assert len(sessions) == 1, sessions
    assert user.depth() == 0
    return sessions[0]


@pytest.fixture
def user(tmp_path: Path) -> Iterator[OneiricUser]:
    scene = OneiricUser(tmp_path)
    yield scene
    scene.stop_agents()


def test_default_destination_is_the_bundled_server_on_oneirics_python(
    oneiric_python: Path, user: OneiricUser
) -> None:
    """With nothing configured, `check` reaches `<Oneiric's python> -m oneiric_session serve`."""
    proc = subprocess.run(
        [str(oneiric_python), "-m", "oneiric_session", "check", "--json"],
        env=user.env,
        cwd=user.root,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is True
    assert answer["destination"] == f"{oneiric_python} -m oneiric_session serve --db {user.db}"
    assert [s["status"] for s in user.sessions()] == ["ended"]


@pytest.mark.parametrize("loop", ["asyncio_run", "running_loop"])
@pytest.mark.parametrize("shell", ["admin", "oneiric"])
def test_oneirics_shell_session_reaches_the_bundled_server_with_its_end(
    oneiric_python: Path, user: OneiricUser, shell: str, loop: str
) -> None:
    """Typed cells run, the exit is silent, and the server records the session, ended, with its length.

    On the running-loop path Oneiric's start task only runs once the REPL is over (the REPL
    blocks the loop), so the session recorded there spans the exit only: its duration is
    real but short. That is Oneiric's order of calls, not something an emitter can change.
    """
    ending = "exit()" if shell == "admin" else ""  # "": EOF ends the REPL
    run = run_shell(oneiric_python, user, shell, loop, ["6*7", PAUSE_CELL, ending])

    assert "Out[1]: 42" in run.stdout
    assert run.stderr == ""
    assert run.marks["emitter_class"] == "oneiric_session.shell.emitter"  # Oneiric built ours
    assert "emitter" in run.marks  # ... and awaited its start
    assert len(run.marks["shutdowns"]) == 1  # our exit hook ran, once

    session = delivered_session(user)
    component, shell_type = SHELLS[shell]
    assert (session["component_name"], session["shell_type"]) == (component, shell_type)
    assert (session["status"], session["exit_reason"]) == ("ended", "user_exit")
    assert session["ended_at"] >= session["started_at"]
    assert session["duration_seconds"] is not None
    if loop == "asyncio_run":
        assert session["duration_seconds"] >= PAUSE_SECONDS
    else:
        assert session["duration_seconds"] > 0


def test_adminshell_in_a_terminal_ends_on_ctrl_d(oneiric_python: Path, user: OneiricUser) -> None:
    """The real terminal path (prompt_toolkit, no running loop): type, read, Ctrl-D."""
    marks = user.root / "marks-pty.json"
    terminal = PtyProcess(
        [str(oneiric_python), "-c", DRIVER, "admin", "asyncio_run", str(marks)],
        env={**user.env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"},
        cwd=user.root,
    )
    try:
        terminal.expect(r"In \[1\]: ", timeout=WAIT_SECONDS)
        terminal.sendline("6*7")
        terminal.expect(r"Out\[1\]: 42")
        terminal.expect(r"In \[2\]: ")
        terminal.sendline(PAUSE_CELL)
        terminal.expect(r"In \[3\]: ", timeout=WAIT_SECONDS)
        terminal.send_eof()
        assert terminal.wait(timeout=WAIT_SECONDS) == 0, terminal.text[-3000:]
    finally:
        terminal.close()
    assert_quiet(terminal.text)
    marked = json.loads(marks.read_text())
    assert (marked["emitter_class"], len(marked["shutdowns"])) == ("oneiric_session.shell.emitter", 1)

    session = delivered_session(user)
    assert (session["component_name"], session["shell_type"]) == ("demo", "DemoShell")
    assert session["exit_reason"] == "user_exit"
    assert session["duration_seconds"] >= PAUSE_SECONDS


@pytest.mark.parametrize("loop", ["asyncio_run", "running_loop"])
def test_a_hung_server_neither_delays_the_prompt_nor_the_exit(
    oneiric_python: Path, user: OneiricUser, loop: str
) -> None:
    """Against a server that never answers, start() and the exit cost what they cost with tracking off.

    The baseline is the same run with provider `noop`. Both events still reach the spool.
    """
    hang, launched = user.root / "hung-server.sh", user.root / "hung-server.launched"
    # An MCP server that says it was launched, then reads its requests and never answers.
    hang.write_text(f"#!/bin/sh\n: > '{launched}'\nexec cat >/dev/null\n")
    hang.chmod(0o755)
    cells = ["6*7"]  # then EOF

    baseline = run_shell(oneiric_python, user, "admin", loop, cells, {"ONEIRIC_SESSION_PROVIDER": "noop"})
    assert not user.spool_path.exists()  # noop recorded nothing
    user.configure(server__command=str(hang), server__args=[])
    hung = run_shell(oneiric_python, user, "admin", loop, cells)

    (exit_hook,) = hung.marks["shutdowns"]
    figures = (
        f"start() to REPL {hung.opening:.3f} s (noop {baseline.opening:.3f} s), "
        f"to the end of the atexit hooks {hung.exit_hooks:.3f} s (noop {baseline.exit_hooks:.3f} s), "
        f"to process end {hung.closing:.3f} s (noop {baseline.closing:.3f} s); in-process: "
        f"emitter start {hung.marks['emitter']:.3f} s, start path {hung.marks['start_path']:.3f} s, "
        f"emitter exit hook {exit_hook:.3f} s"
    )
    print(figures)
    for run in (baseline, hung):
        assert "Out[1]: 42" in run.stdout
        assert run.stderr == ""
    assert hung.opening - baseline.opening < SLACK_SECONDS, figures
    assert hung.marks["start_path"] < SLACK_SECONDS, figures
    assert hung.marks["emitter"] < SLACK_SECONDS, figures
    assert hung.exit_hooks - baseline.exit_hooks < SLACK_SECONDS, figures
    assert exit_hook < SLACK_SECONDS, figures
    # The start and the end are on disk; the agent is stuck on the hung server, not the shell.
    assert user.depth() == 2
    wait_until(launched.exists, what="the agent to launch the hung server")
    assert user.depth() == 2
    assert not user.db.exists()
