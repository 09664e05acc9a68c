"""The attempt times after a failure, as docs/architecture.md states them: one destination worker
(the one owner of retrying) on a fake clock, with a scripted client, the jitter set to zero."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.agent.resilience import RetryPolicy, Stopped
from oneiric_session.agent.worker import DestinationWorker
from oneiric_session.errors import ServerUnavailableError
from oneiric_session.spool import Spool
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport.scripted import ScriptedClient
from tests.support.fake_clock import START, FakeClock, destination_worker

# With the default tuning: a row's three attempts 0.5 s and 1 s apart, the destination's back-off
# of 0.5 s, then the breaker opens at the fifth failed attempt in a row; from then on one probe
# about every 60 s (breaker_reset_seconds), each followed by one try that finds the circuit open.
DEFAULT_SCHEDULE = [0.0, 0.5, 1.5, 2.0, 2.5, 63.5, 124.0, 184.5]


class Server:
    """Down until `up_at`; then it answers."""

    def __init__(self, clock: FakeClock, up_at: float = float("inf")) -> None:
        self.clock = clock
        self.up_at = up_at

    def __call__(self, tool: str, event: Mapping[str, Any]) -> str:
        if self.clock.now < self.up_at:
            raise ServerUnavailableError("connection refused")
        return "srv-1" if tool == "track_session_start" else "ended"


def _worker(tmp_path: Path, clock: FakeClock, client: ScriptedClient, tuning: Tuning) -> DestinationWorker:
    spool = Spool(
        tmp_path / "spool.sqlite3",
        max_rows=2**62,
        max_bytes=2**62,
        max_age_seconds=float("inf"),
        clock=clock,
    )
    destination = Destination(command="session-buddy-test", tuning=tuning)
    event = events.build_start_event(
        component_name="demo", shell_type="ScheduleShell", metadata=None, limits=Limits()
    )
    spool.append_start("local-a", destination, event, pid=None, pid_start_time=None, boot_id=None)
    return destination_worker(spool, destination, clock, client)


async def _run(worker: DestinationWorker, clock: FakeClock, until: float) -> None:
    """Drain whenever the agent would (each back-off's end), until delivered or `until`."""
    while worker.tally.delivered == 0 and clock.now - START < until:
        await worker.drain(replaying=False, stopping=lambda: False)
        clock.now = max(clock.now, worker.retry_at)


async def test_the_default_schedule_after_a_server_goes_away(tmp_path: Path) -> None:
    clock = FakeClock()
    client = ScriptedClient(Server(clock), clock=clock)
    worker = _worker(tmp_path, clock, client, Tuning())
    await _run(worker, clock, until=190.0)
    assert [call.at - START for call in client.calls] == DEFAULT_SCHEDULE
    assert worker.policy.breaker.state == "open"
    assert worker.spool.stats().depth == 1  # nothing lost, nothing dead
    assert worker.failures > 0 and worker.last_error is not None


async def test_the_first_probe_after_the_server_is_back_delivers(tmp_path: Path) -> None:
    clock = FakeClock()
    client = ScriptedClient(Server(clock, up_at=START + 30.0), clock=clock)
    worker = _worker(tmp_path, clock, client, Tuning())
    await _run(worker, clock, until=600.0)
    assert [call.at - START for call in client.calls] == [*DEFAULT_SCHEDULE[:6]]  # delivered at 63.5
    assert worker.tally.delivered == 1
    assert worker.policy.breaker.state == "closed"
    assert (worker.failures, worker.last_error, worker.spool.stats().depth) == (0, None, 0)


async def test_a_short_outage_is_ridden_out_by_the_attempts_of_one_call(tmp_path: Path) -> None:
    clock = FakeClock()
    client = ScriptedClient(Server(clock, up_at=START + 1.0), clock=clock)
    worker = _worker(tmp_path, clock, client, Tuning())
    await _run(worker, clock, until=60.0)
    assert [call.at - START for call in client.calls] == [0.0, 0.5, 1.5]
    assert clock.slept == [0.5, 1.0]
    assert worker.failures == 0  # the destination never backed off


@pytest.mark.parametrize("attempts", [1, 2])
async def test_the_attempts_setting_is_the_tries_per_call(tmp_path: Path, attempts: int) -> None:
    clock = FakeClock()
    client = ScriptedClient(Server(clock), clock=clock)
    worker = _worker(tmp_path, clock, client, Tuning(attempts=attempts, breaker_threshold=100))
    await worker.drain(replaying=False, stopping=lambda: False)
    assert len(client.calls) == attempts
    assert worker.retry_at == clock.now + 0.5  # then the destination backs off


async def test_a_stop_cuts_a_retry_wait_short() -> None:
    stop = asyncio.Event()
    policy = RetryPolicy(Tuning(wait_min_seconds=30.0), stop=stop)
    calls = 0

    async def send() -> str:
        nonlocal calls
        calls += 1
        stop.set()  # the agent is told to stop while this attempt fails
        raise ServerUnavailableError("connection refused")

    async with asyncio.timeout(5):  # a 30 s wait, cut short
        with pytest.raises(Stopped):
            await policy.call(send)
    assert calls == 1
