"""One destination worker in-process on a fake clock: the agent's retrying and windowed delivery
tested without waiting (the jitter set to zero; the client is the test's)."""

from __future__ import annotations

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
