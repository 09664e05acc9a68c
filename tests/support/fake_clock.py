"""One destination worker in-process on a fake clock: the agent's retrying and windowed delivery
tested without waiting (the jitter set to zero; the client is the test's)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from oneiric_session.agent.credentials import Credentials
from oneiric_session.agent.resilience import RetryPolicy
from oneiric_session.agent.worker import DestinationWorker, Tally
from oneiric_session.spool import Spool
from oneiric_session.tracking.destination import Destination

START = 1_800_000_000.0


class FakeClock:
    """Monotonic and wall clock at once; `sleep` moves it on (and records how far)."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def destination_worker(
    spool: Spool, destination: Destination, clock: FakeClock, client: Any
) -> DestinationWorker:
    """The worker the agent would make for `destination`, on `clock`, connecting to `client`."""
    return DestinationWorker(
        key=destination.key,
        describe=destination.describe(),
        spool=spool,
        credentials=Credentials(),
        client_factory=lambda _destination, _token: client,
        mono=clock,
        wall=clock,
        tally=Tally(),
        policy=RetryPolicy(
            destination.tuning, clock=clock, sleep=clock.sleep, jitter=lambda _low, _high: 0.0
        ),
        changed=lambda: None,
    )


def one_start_worker(
    tmp_path: Path, answer: Callable[[str, Mapping[str, Any]], str]
) -> tuple[Spool, DestinationWorker]:
    """A spool holding one session start and the worker of its destination (one attempt a
    call), whose scripted client answers with `answer`; the caller closes the spool."""
    from oneiric_session.tracking import events
    from oneiric_session.tracking.destination import Tuning
    from oneiric_session.tracking.limits import Limits
    from oneiric_session.transport.scripted import ScriptedClient

    clock = FakeClock()
    spool = Spool(tmp_path / "spool.sqlite3", clock=clock)
    destination = Destination(command="session-buddy-test", tuning=Tuning(attempts=1))
    event = events.build_start_event(
        component_name="demo", shell_type="BugShell", metadata=None, limits=Limits()
    )
    spool.append_start("local-a", destination, event, pid=None, pid_start_time=None, boot_id=None)
    return spool, destination_worker(spool, destination, clock, ScriptedClient(answer, clock=clock))
