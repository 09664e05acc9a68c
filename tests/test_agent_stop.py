"""Stopping the agent (SIGTERM, SIGINT, SIGHUP): the calls in flight are answered and acknowledged
within a grace, so the next agent never sends them again; a second signal stops at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.agent import DeliveryAgent, run_agent, uncapped_spool
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.limits import Limits
from oneiric_session.wakeup import AgentLock
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.faults import FAULT_SERVER


class HungClient:
    """A server that takes every call and never answers it."""

    server_name = None

    def __init__(self, called: asyncio.Event) -> None:
        self.called = called

    async def start_session(self, event: Mapping[str, Any]) -> str:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def end_session(self, event: Mapping[str, Any]) -> str:
        return await self.start_session(event)

    async def aclose(self) -> None:
        pass


async def _serving_a_hung_call(tmp_path: Path, grace: float) -> tuple[DeliveryAgent, asyncio.Task[None]]:
    """An agent in this process, signals handled by `run_agent`, once its call to a hung server is sent."""
    path = tmp_path / "spool.sqlite3"
    spool = uncapped_spool(path)
    event = events.build_start_event(
        component_name="demo", shell_type="StopShell", metadata=None, limits=Limits()
    )
    spool.append_start(
        "local-a", Destination(command="hung"), event, pid=None, pid_start_time=None, boot_id=None
    )
    called = asyncio.Event()
    agent = DeliveryAgent(spool, client_factory=lambda _d, _t: HungClient(called), stop_grace_seconds=grace)
    lock = AgentLock(path)
    assert lock.acquire()
    serving = asyncio.create_task(run_agent(agent, lock, None))
    await asyncio.wait_for(called.wait(), WAIT_SECONDS)
    return agent, serving


async def _signalled(agent: DeliveryAgent) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(WAIT_SECONDS):
        while not agent.stopping:
            await asyncio.sleep(0)


async def test_a_stop_waits_for_a_call_in_flight_at_most_its_grace(tmp_path: Path) -> None:
    agent, serving = await _serving_a_hung_call(tmp_path, grace=0.05)
    await _signalled(agent)
    await asyncio.wait_for(serving, WAIT_SECONDS)  # the grace ran out: the call is cut off
    assert agent.spool.stats().depth == 1  # its row stays, for the next agent
    agent.spool.close()


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    agent, serving = await _serving_a_hung_call(tmp_path, grace=3600.0)
    await _signalled(agent)
    await asyncio.wait({serving}, timeout=1.0)  # (without the grace, stopping takes a few ms)
    assert not serving.done()  # waiting for the call's answer
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, WAIT_SECONDS)
    assert agent.spool.stats().depth == 1
    agent.spool.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stopped_agent_keeps_the_answer_to_its_call_in_flight(scene: Scene, signum: int) -> None:
    """Stopped while the server is answering, the agent acknowledges the answer before it exits: the
    start is not in the spool for the next agent to send again (a second session at a server that
    is not idempotent on event_id, as Session-Buddy 0.23.0)."""
    record = scene.root / "record.jsonl"
    scene.configure(
        server__command=sys.executable,
        server__args=[FAULT_SERVER],
        server__env={"FAULT_MODE": "slow", "FAULT_DELAY": "1.0", "FAULT_RECORD": str(record)},
    )
    agent = scene.start_agent()
    shell = scene.shell(1, hold=True)
    assert shell.stdout is not None and shell.stdin is not None
    assert shell.stdout.readline().startswith("local-")

    def calls() -> list[dict[str, Any]]:
        lines = record.read_text().splitlines() if record.exists() else []
        return [entry for entry in map(json.loads, lines) if entry.get("tool") == "track_session_start"]

    wait_until(calls, what="the start's call to reach the server")
    agent.send_signal(signum)
    assert agent.wait(timeout=WAIT_SECONDS) == 0
    assert scene.depth() == 0  # answered and acknowledged: nothing for the next agent to send
    with scene.spool() as spool:
        assert len(spool.open_sessions()) == 1  # mapped to the server's session id, watched
    assert len(calls()) == 1
    shell.stdin.close()
    assert shell.wait(timeout=WAIT_SECONDS) == 0
