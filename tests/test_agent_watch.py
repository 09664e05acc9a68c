"""Abnormal ends found by pid watching (in-process, real /proc, injected clocks)."""

from __future__ import annotations

import os
from pathlib import Path

from oneiric_session.agent import ALIVE_WRITE_SECONDS, DeliveryAgent
from oneiric_session.spool import Spool
from oneiric_session.tracking import procinfo
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.events import build_start_event
from oneiric_session.tracking.limits import Limits


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _spool_with_session(tmp_path: Path, clock: Clock, *, boot_id: str | None) -> Spool:
    spool = Spool(tmp_path / "spool.sqlite3", clock=clock)
    event = build_start_event(component_name="demo", shell_type="TestShell", metadata=None, limits=Limits())
    me = procinfo.identify()
    spool.append_start(
        "local-1",
        Destination(command="unused"),
        event,
        pid=me.pid,
        pid_start_time=me.start_time,
        boot_id=boot_id,
    )
    return spool


def _agent(spool: Spool, clock: Clock) -> DeliveryAgent:
    def no_client(*_: object) -> object:
        raise AssertionError("watching sessions needs no server")

    return DeliveryAgent(spool, client_factory=no_client, wall=clock)  # type: ignore[arg-type]


def test_a_session_from_before_a_reboot_is_ended_as_abnormal_with_its_last_seen_duration(
    tmp_path: Path,
) -> None:
    clock = Clock(1000.0)
    spool = _spool_with_session(tmp_path, clock, boot_id="a-boot-before-the-reboot")
    clock.now = 1042.5
    spool.mark_alive("local-1")
    clock.now = 5000.0
    assert _agent(spool, clock).watch_sessions() == []
    (end,) = [e for e in spool.list_pending() if e.kind == "end"]
    assert end.payload["metadata"]["exit_reason"] == "abnormal"
    assert end.payload["metadata"]["duration_seconds"] == 42.5
    assert end.payload["timestamp"].startswith("1970-01-01T00:17:22.5")  # ended when last seen alive
    assert spool.open_sessions() == []


def test_a_live_session_stays_open_and_is_marked_alive_now_and_then(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    spool = _spool_with_session(tmp_path, clock, boot_id=procinfo.boot_id())
    agent = _agent(spool, clock)
    clock.now = 1001.0
    assert [s.handle for s in agent.watch_sessions()] == ["local-1"]
    assert spool.open_sessions()[0].last_seen_alive == 1000.0  # not written every poll
    clock.now = 1000.0 + ALIVE_WRITE_SECONDS
    agent.watch_sessions()
    assert spool.open_sessions()[0].last_seen_alive == 1000.0 + ALIVE_WRITE_SECONDS
    assert [e.kind for e in spool.list_pending()] == ["start"]
    assert os.getpid() == spool.open_sessions()[0].pid
