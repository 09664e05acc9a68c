"""The agent's destination workers: one per destination, made on first need, started when due,
and what they say about themselves published beside the spool when it changes.

`DeliveryAgent` (agent/core.py) owns one `Destinations`: it asks `schedule()` at each look and
waits on the workers' tasks; `publish()` is called by a worker whose status changed.
"""

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

import oneiric_session.agent.clock as agent_clock
from oneiric_session.agent.credentials import Credentials
from oneiric_session.agent.resilience import RetryPolicy
from oneiric_session.agent.status import publish_destinations
from oneiric_session.agent.worker import ClientFactory, DestinationWorker, Tally, bug_report
from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool, SpooledEvent
from oneiric_session.tracking.destination import Destination

__all__ = ["Destinations"]

logger = logging.getLogger("oneiric_session.agent")


class Destinations:
    """The workers of one agent, by destination key."""

    def __init__(
        self,
        spool: Spool,
        *,
        credentials: Credentials,
        client_factory: ClientFactory,
        mono: Callable[[], float],
        wall: Callable[[], float],
        tally: Tally,
        stop: asyncio.Event,
        poll_seconds: float,
        changed: Callable[[], None],
        on_answer: Callable[[SpooledEvent], None] | None,
    ) -> None:
        self.spool = spool
        self.workers: dict[str, DestinationWorker] = {}
        self.due_at: float | None = None  # monotonic: when the earliest row not yet due becomes due
        # A worker: what every worker of this agent shares; `worker()` adds the destination's own.
        self._new_worker = functools.partial(
            DestinationWorker,
            spool=spool,
            credentials=credentials,
            client_factory=client_factory,
            mono=mono,
            wall=wall,
            tally=tally,
            changed=self.publish,
            on_answer=on_answer,
        )
        self._mono = mono
        self._wall = wall
        self._stop = stop
        self._poll_seconds = poll_seconds
        self._changed = changed  # the agent's loop should look again
        self._published: str | None = None

    def worker(self, destination: Destination) -> DestinationWorker:
        worker = self.workers.get(destination.key)
        if worker is None:
            worker = self.workers[destination.key] = self._new_worker(
                key=destination.key,
                describe=destination.describe(),
                policy=RetryPolicy(destination.tuning, clock=self._mono, stop=self._stop),
            )
        return worker

    def schedule(self, *, replaying: bool, only: str | None = None) -> list[Destination]:
        """Start a worker for each destination with pending rows (or for `only`'s) that is not busy
        or backing off; the destinations with pending rows. A replay sends what waits out a back-off too."""
        now = self._mono()
        destinations = self.spool.pending_destinations()
        waits = None
        if not replaying:  # seconds until each destination's earliest deliverable row is due
            waits = agent_clock.due_waits(
                self.spool,
                self.workers.values(),
                destinations,
                mono=now,
                wall=self._wall(),
                floor=self._poll_seconds,
            )
        self.due_at = None
        for destination in destinations:
            if only is not None and destination.key != only:
                continue
            worker = self.worker(destination)
            if worker.task is not None or worker.retry_at > now:
                continue
            if waits is not None:
                wait = waits.get(worker.key)
                if wait is None:
                    continue  # nothing deliverable yet (ends wait for their start)
                if wait > 0:  # not due yet: the loop sleeps until then (or a wake-up)
                    self.due_at = min(self.due_at or float("inf"), now + wait)
                    continue
            drain = worker.drain(replaying=replaying, stopping=self._stop.is_set)
            worker.task = asyncio.create_task(drain, name=f"deliver-{worker.key}")
            worker.task.add_done_callback(functools.partial(self._done, worker))
        return destinations

    def sending(self) -> set[str]:
        """The sessions the caps must spare: whose start is on its way to a server, answered and not
        recorded yet, or went unanswered."""
        return set().union(*(w.sending | w.unanswered for w in self.workers.values()))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [w.task for w in self.workers.values() if w.task is not None]

    def failing(self) -> bool:
        return any(w.last_error is not None for w in self.workers.values())

    def backoffs(self, now: float) -> list[float]:
        """When each idle destination that is backing off may send again (monotonic)."""
        return [w.retry_at for w in self.workers.values() if w.task is None and w.retry_at > now]

    async def close_idle_clients(self, idle_seconds: float, *, force: bool = False) -> None:
        now = self._mono()
        for worker in self.workers.values():
            idle = force or now - worker.last_used >= idle_seconds
            if worker.client is not None and worker.task is None and idle:
                await worker.close_client()

    def publish(self) -> None:
        """Publish breaker state and last errors beside the spool (only when they change)."""
        statuses = {key: worker.status() for key, worker in self.workers.items()}
        for key, status in statuses.items():
            if status.last_error is not None:  # a shell's exit notice says how many wait
                with contextlib.suppress(SpoolError):
                    statuses[key] = status._replace(waiting=self.spool.waiting(key))
        try:
            self._published = publish_destinations(self.spool.path, statuses, self._published)
        except OSError as exc:  # what `status` shows may lag; delivery goes on
            logger.debug("could not publish the destinations' status: %s", exc)

    def _done(self, worker: DestinationWorker, task: asyncio.Task[None]) -> None:
        if worker.task is task:
            worker.task = None
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, SpoolError):  # (the disk, say: its message holds no secret)
            logger.error("delivery to %s stopped: %s", worker.key, exc)
        elif exc is not None:
            logger.error("delivery to %s stopped:\n%s", worker.key, bug_report(exc))
        if exc is not None:
            worker.retry_at = self._mono() + self._poll_seconds
        self._changed()
