"""AdminShell's lifecycle in-process: signal handlers, exit status, what it imports."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.shell import AdminShell
from tests.support.file_tracker import child_env


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class ScriptedShell(AdminShell):
    """An AdminShell whose REPL is a function the test supplies."""

    def __init__(self, repl: Any, **kwargs: Any) -> None:
        super().__init__(component_name="scripted", **kwargs)
        self._script = repl

    def _run_repl(self) -> None:
        self._script(self)


def test_user_exit_records_the_end_and_restores_the_handlers(session_tracker: Any, tmp_path: Path) -> None:
    seen = {}

    def repl(shell: AdminShell) -> None:
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    assert ScriptedShell(repl, settings_dir=tmp_path).start() == 0
    assert seen["sigterm"] != before  # ours, while the REPL runs
    assert signal.getsignal(signal.SIGTERM) == before
    (session,) = session_tracker.sessions
    assert (session.component_name, session.shell_type, session.exit_reason) == (
        "scripted",
        "ScriptedShell",
        "user_exit",
    )


def test_a_signal_records_its_reason_then_reaches_the_handler_it_replaced(
    session_tracker: Any, tmp_path: Path
) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:

        def repl(shell: AdminShell) -> None:
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("the handler should have unwound the REPL")

        status = ScriptedShell(repl, settings_dir=tmp_path).start()
        assert status == 128 + signal.SIGTERM
        assert calls == [signal.SIGTERM]  # re-raised once the end was recorded
        assert session_tracker.sessions[0].exit_reason == "sigterm"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored(session_tracker: Any, tmp_path: Path) -> None:
    """Under nohup SIGHUP is ignored: the shell does not take it over."""
    seen = {}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def repl(shell: AdminShell) -> None:
        seen["sighup"] = signal.getsignal(signal.SIGHUP)

    ScriptedShell(repl, settings_dir=tmp_path).start()
    assert seen["sighup"] is signal.SIG_IGN
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_an_exception_is_recorded_then_re_raised(session_tracker: Any, tmp_path: Path) -> None:
    def repl(shell: AdminShell) -> None:
        raise RuntimeError("the REPL broke")

    with pytest.raises(RuntimeError, match="the REPL broke"):
        ScriptedShell(repl, settings_dir=tmp_path).start()
    assert session_tracker.sessions[0].exit_reason == "exception"


def test_sys_exit_in_the_shell_is_its_exit_status(session_tracker: Any, tmp_path: Path) -> None:
    def repl(shell: AdminShell) -> None:
        raise SystemExit(3)

    assert ScriptedShell(repl, settings_dir=tmp_path).start() == 3
    assert session_tracker.sessions[0].exit_reason == "user_exit"


def test_a_subclass_reports_its_own_name_version_and_adapters(session_tracker: Any, tmp_path: Path) -> None:
    class BillingShell(ScriptedShell):
        def _get_component_name(self) -> str:
            return "billing"

        def _get_component_version(self) -> str:
            return "2.1.0"

        def _get_adapters_info(self) -> list[str]:
            return ["postgres"]

    BillingShell(lambda shell: None, settings_dir=tmp_path).start()
    (session,) = session_tracker.sessions
    assert (session.component_name, session.shell_type) == ("billing", "BillingShell")
    assert session.metadata == {"component_version": "2.1.0", "adapters": ["postgres"]}


def test_opening_and_leaving_the_shell_with_noop_imports_nothing_heavy(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from oneiric_session.shell import AdminShell
        AdminShell(repl="stdlib").start()   # stdin is empty: the console sees EOF at once
        print("heavy:", sorted(m for m in ("mcp", "pydantic", "IPython", "asyncio") if m in sys.modules))
        """
    )
    env = child_env(tmp_path, ONEIRIC_SESSION_PROVIDER="noop")
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout


def test_a_shell_started_again_is_a_session_of_its_own(session_tracker: Any, tmp_path: Path) -> None:
    """The second start kept the first one's "ending": its end was recorded as user_exit whatever
    happened, and SIGTERM no longer unwound its REPL."""
    calls: list[int] = []
    runs: list[Any] = []
    kept_running: list[str] = []

    def leave(shell: AdminShell) -> None:
        pass

    def broken(shell: AdminShell) -> None:
        raise RuntimeError("boom")

    def killed(shell: AdminShell) -> None:
        signal.raise_signal(signal.SIGTERM)
        kept_running.append("the REPL ran on after SIGTERM")

    shell = ScriptedShell(lambda s: runs.pop(0)(s), settings_dir=tmp_path)
    runs.extend([leave, broken, killed])
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        assert shell.start() == 0
        with pytest.raises(RuntimeError):
            shell.start()
        assert shell.start() == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert kept_running == []
    assert [s.exit_reason for s in session_tracker.sessions] == ["user_exit", "exception", "sigterm"]
    assert calls == [signal.SIGTERM]


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ("ipython", "IPython is not installed; the standard console is used"),
        ("ipyhton", "ONEIRIC_SESSION_REPL='ipyhton' is not auto, ipython or stdlib; auto is used"),
    ],
)
def test_a_console_that_cannot_be_had_is_said_and_the_standard_one_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], choice: str, said: str
) -> None:
    """IPython asked for where it is not installed raised out of the shell, after its start was
    recorded. (Whether IPython is installed here is the machine's: its absence is faked.)"""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "IPython" else real(name, *a)
    )
    monkeypatch.setenv("ONEIRIC_SESSION_REPL", choice)
    assert AdminShell(component_name="demo")._use_ipython() is False
    assert capsys.readouterr().err == f"oneiric-session: {said}\n"
