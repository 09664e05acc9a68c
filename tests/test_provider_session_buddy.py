"""The `session-buddy` provider in the shell's process: spool, wake, never raise, never wait."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.spool import Spool
from oneiric_session.tracking import procinfo
from oneiric_session.tracking.providers.session_buddy import LOSS_SPOOL, SessionBuddyTracker, create
from oneiric_session.tracking.tracker import Tracker
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until

TOKEN = "tok-" + "s3cr3t" * 6


class Waker:
    """Records wake-ups instead of reaching an agent."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, Any]] = []
        self.idle_exit_seconds: list[float | None] = []

    def __call__(
        self, spool_path: Path, *, tokens: Any = None, idle_exit_seconds: float | None = None
    ) -> str:
        self.calls.append((spool_path, tokens))
        self.idle_exit_seconds.append(idle_exit_seconds)
        return "woken"


def _tracker(tmp_path: Path, waker: Waker, **env: str) -> SessionBuddyTracker:
    environ = {**Scene(tmp_path).env, **env}
    return SessionBuddyTracker(load_config(environ=environ), waker=waker)


def test_an_agent_this_shell_spawns_gets_the_shells_idle_exit_setting(tmp_path: Path) -> None:
    """The agent has no settings directory of its own: the shell hands it agent.idle_exit_seconds."""
    waker = Waker()
    tracker = _tracker(tmp_path, waker, ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS="7.5")
    tracker.start(component_name="demo", shell_type="TestShell")
    tracker.close()
    assert waker.idle_exit_seconds == [7.5]


def test_start_and_end_are_spooled_with_the_shell_identity_and_wake_the_agent(tmp_path: Path) -> None:
    """start() spools the event with pid, start time and boot id; end() follows; each wakes the agent."""
    waker = Waker()
    tracker = _tracker(tmp_path, waker, SESSION_BUDDY_TOKEN=TOKEN)
    assert isinstance(tracker, Tracker)
    assert tracker.health() is True
    handle = tracker.start(component_name="demo shell!", shell_type="TestShell", metadata={"k": "v"})
    assert handle is not None and handle.startswith("local-")

    with Spool(tracker.spool_path) as spool:
        assert spool.take_in() == 1  # the agent's part: the shell wrote its outbox only
        (session,) = spool.open_sessions()
        me = procinfo.identify()
        assert (session.handle, session.pid, session.pid_start_time, session.boot_id) == (handle, *me)
        (start,) = spool.list_pending()
        assert start.payload["component_name"] == "demo_shell"
        assert start.destination == tracker.destination

    assert tracker.end(handle, exit_reason="user_exit") is True
    assert tracker.end(handle) is True  # a second end is a no-op
    with Spool(tracker.spool_path) as spool:
        end = spool.list_pending()[1]
        assert end.kind == "end"
        assert end.payload["metadata"]["exit_reason"] == "user_exit"
        assert end.payload["metadata"]["duration_seconds"] >= 0
    assert waker.calls == [(tracker.spool_path, {tracker.destination.key: TOKEN})] * 2
    tracker.close()
    tracker.close()
    for path in tracker.spool_path.parent.rglob("*"):  # the spool's files and the outbox's records
        assert path.is_dir() or TOKEN.encode() not in path.read_bytes(), path


def test_an_unusable_spool_is_a_counted_loss_never_an_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spool's directory is a file: start() answers None, end() False, health() False, one line each."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    waker = Waker()
    tracker = _tracker(tmp_path, waker, ONEIRIC_SESSION_SPOOL__PATH=str(blocker / "spool.sqlite3"))
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        assert tracker.start(component_name="demo", shell_type="TestShell") is None
        assert tracker.end("local-unknown") is False
    assert tracker.health() is False
    assert tracker.losses[LOSS_SPOOL] == 2
    assert len(caplog.records) == 2
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in caplog.records)
    assert waker.calls == []
    tracker.close()


def test_the_shell_side_never_imports_mcp_and_returns_before_delivery(tmp_path: Path) -> None:
    """A shell process: start+end through the registry return at once; mcp stays out of the process."""
    scene = Scene(tmp_path)
    script = textwrap.dedent(
        """
        import sys, time
        from oneiric_session.tracking.registry import resolve_tracker
        tracker = resolve_tracker()
        began = time.perf_counter()
        handle = tracker.start(component_name="demo", shell_type="TestShell")
        ok = tracker.end(handle)
        took = time.perf_counter() - began
        tracker.close()
        print(type(tracker).__name__, ok, "mcp" in sys.modules, took < 1.0)
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script],
            env=scene.env,
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["SessionBuddyTracker", "True", "False", "True"]
        wait_until(lambda: len(scene.sessions()) == 1 and scene.depth() == 0, what="delivery")
        assert scene.sessions()[0]["status"] == "ended"
    finally:
        scene.stop_agents()


def test_closing_with_events_stuck_says_so_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the agent cannot reach the server, close() tells the person how many wait and why."""
    scene = Scene(tmp_path, server__command=str(tmp_path / "no-such-server"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    monkeypatch.setattr(os, "environ", {**os.environ, **scene.env})
    try:
        tracker = create(load_config(environ=scene.env))
        tracker.end(tracker.start(component_name="demo", shell_type="TestShell") or "")
        wait_until(lambda: tracker.pending_notice(), what="the agent's failure")
        tracker.close()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("oneiric-session: 2 event(s) waiting for the server (")
        assert "not found" in err[0] and "delivered later" in err[0]
    finally:
        scene.stop_agents()
