"""Pipelined delivery (several calls in flight per destination), with real agents and real servers."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneiric_session import wakeup
from oneiric_session.agent.pipeline import DEFAULT_WINDOW, MAX_WINDOW, window_size
from oneiric_session.agent.status import read_destinations
from oneiric_session.config.loader import load_config
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.faults import FAULT_SERVER


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    scene = Scene(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    yield scene
    scene.stop_agents()


def _spool_sessions(scene: Scene, count: int, prefix: str) -> list[str]:
    """`count` whole sessions (start + end, component `<prefix><n>`) spooled as shells would; no pid
    is watched. Their start event ids, in order."""
    destination = load_config(environ=scene.env).destination()
    limits = Limits()
    ids = []
    with scene.spool() as spool:
        for n in range(count):
            handle = f"local-{uuid.uuid4()}"
            start = events.build_start_event(
                component_name=f"{prefix}{n}", shell_type="PipeShell", metadata=None, limits=limits
            )
            assert spool.append_start(handle, destination, start, pid=None, pid_start_time=None, boot_id=None)
            end = events.build_end_event(
                session_id=handle, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=limits
            )
            assert spool.append_end(handle, destination, end)
            ids.append(start["event_id"])
    return ids


def _agent(scene: Scene, kill_after: str | None = None) -> Any:
    return scene.agent("--log-file", str(wakeup.agent_log_path(scene.spool_path)), kill_after=kill_after)


def _use_fault_server(scene: Scene, record: Path, *, delay: float, window: int | None) -> None:
    scene.configure(
        server__command=sys.executable,
        server__args=[FAULT_SERVER],
        server__env={
            "FAULT_MODE": "slow",
            "FAULT_DELAY": str(delay),
            "FAULT_RECORD": str(record),
            "FAULT_RECORD_TIMES": "1",
        },
    )
    if window is not None:
        scene.configure(agent__window=str(window))


def _timeline(record: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return sorted((e for e in lines if "at" in e), key=lambda e: e["at"])


def _most_in_flight(timeline: list[dict[str, Any]]) -> int:
    in_flight = most = 0
    for entry in timeline:
        in_flight += 1 if "tool" in entry else -1
        most = max(most, in_flight)
    return most


def test_window_sizes() -> None:
    """A setting wins (bounded); unset, only a server known to be safe gets more than one call."""
    assert window_size(4, None) == 4
    assert window_size(1000, "oneiric-session") == MAX_WINDOW
    assert window_size(0, "oneiric-session") == DEFAULT_WINDOW > 1
    assert window_size(0, "session-buddy") == 1
    assert window_size(0, None) == 1  # not connected yet: the first call goes alone


def test_the_window_is_filled_and_bounded_and_each_end_follows_its_start_answer(scene: Scene) -> None:
    """Window 4 on a slow server: 4 calls in flight at once, never 5; every end arrives after the
    answer to its own start, each event once."""
    record = scene.root / "record.jsonl"
    _use_fault_server(scene, record, delay=0.2, window=4)
    ids = _spool_sessions(scene, 12, "pipe-")
    _agent(scene)
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    timeline = _timeline(record)
    assert _most_in_flight(timeline) == 4
    starts = [e for e in timeline if e.get("tool") == "track_session_start"]
    assert sorted(e["arguments"]["event_id"] for e in starts) == sorted(ids)
    answered_at = {e["session_id"]: e["at"] for e in timeline if e.get("answered") == "track_session_start"}
    ends = [e for e in timeline if e.get("tool") == "track_session_end"]
    assert len(ends) == 12
    assert len(answered_at) == 12  # one component each: the fault server's ids are distinct
    for end in ends:
        assert end["at"] > answered_at[end["arguments"]["session_id"]]


def test_a_server_not_known_to_be_safe_gets_one_call_at_a_time(scene: Scene) -> None:
    """With the window unset, a server other than the bundled one (the real Session-Buddy is not
    idempotent) never has two calls in flight."""
    record = scene.root / "record.jsonl"
    _use_fault_server(scene, record, delay=0.05, window=None)
    _spool_sessions(scene, 6, "one-")
    _agent(scene)
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    assert _most_in_flight(_timeline(record)) == 1


def _server_rows(scene: Scene) -> list[tuple[str, str]]:
    if not scene.db.exists():
        return []
    with contextlib.closing(sqlite3.connect(scene.db)) as conn:
        try:
            return conn.execute("SELECT event_id, status FROM sessions").fetchall()
        except sqlite3.OperationalError:  # the server is still creating its schema
            return []


def _assert_exactly_once(scene: Scene, ids: list[str]) -> None:
    rows = _server_rows(scene)
    assert sorted(event_id for event_id, _ in rows) == sorted(ids)  # each once, none lost
    assert {status for _, status in rows} == {"ended"}
    assert scene.depth() == 0
    assert scene.dead() == 0


def test_kill_9_with_a_full_window_in_flight_loses_and_doubles_nothing(scene: Scene) -> None:
    """SIGKILL at the 40th answer with the bundled server's window full (calls in flight, answers not
    yet committed): the next agent re-sends them, the server records each session once."""
    ids = _spool_sessions(scene, 100, "kill-")
    agent = _agent(scene, kill_after="start:40")
    assert agent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    recorded = {event_id for event_id, _ in _server_rows(scene)}
    assert len(recorded) >= 40
    with scene.spool() as spool:
        pending_starts = {r.event_id for r in spool.list_pending() if r.kind == "start"}
    # The server had recorded starts the spool still holds: answered or in flight, not committed.
    assert len(pending_starts & recorded) >= 2
    _agent(scene)
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    _assert_exactly_once(scene, ids)


def test_kill_9_at_several_moments_of_a_backlog_loses_and_doubles_nothing(scene: Scene) -> None:
    """External SIGKILLs while a backlog drains through a full window, then a last agent: exactly once."""
    ids = _spool_sessions(scene, 150, "many-")
    for threshold in (10, 60, 110):
        agent = _agent(scene)
        wait_until(lambda t=threshold: len(_server_rows(scene)) >= t, what=f"{threshold} sessions recorded")
        agent.send_signal(signal.SIGKILL)
        assert agent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    _agent(scene)
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    _assert_exactly_once(scene, ids)


def test_a_window_delivers_again_once_its_server_is_back(scene: Scene) -> None:
    """agent.window = 4, a server that refuses to start until the breaker (threshold 2, reset 1 s)
    has opened, then is healthy: the backlog drains. (A second call beside the breaker's probe found
    the circuit open and its back-off cancelled the probe: the agent never delivered again.)"""
    refuse = scene.root / "refuse"
    refuse.touch()
    scene.configure(
        server__command=sys.executable,
        server__args=[FAULT_SERVER],
        server__env={"FAULT_REFUSE_FILE": str(refuse)},
        agent__window="4",
        breaker__threshold="2",
        breaker__reset_seconds="1",
        agent__idle_exit_seconds="60",
    )
    _spool_sessions(scene, 6, "win-")
    scene.start_agent()

    def breaker_opened() -> bool:
        return any(s.breaker != "closed" for s in read_destinations(scene.spool_path).values())

    wait_until(breaker_opened, what="the breaker to open")
    refuse.unlink()
    wait_until(lambda: scene.depth() == 0, what="the backlog to drain once the server is back")
