"""The delivery agent: one process per spool that sends spooled events to their servers.

Shells only append to the spool and wake the agent (see `wakeup`). The agent holds the
spool's lock, keeps one destination worker (`worker`) per destination with its client warm
across shells, and schedules them: each delivers its oldest due rows first, up to a window of
calls in flight on its one session (`pipeline`). A row leaves the spool only after the server
answered, so a kill -9 at any moment loses nothing; a crash between the answer and the
acknowledgement re-sends the rows in flight or not yet committed. The bundled server is
idempotent on `event_id`, so that makes no second session; the real Session-Buddy 0.23.0 is
not (docs/architecture.md).

Tokens and secret server.env values live in this process's memory only (`credentials`); a
new token requeues the authentication dead letters. The pids of open sessions are watched
(`watch`): a shell that died without an end gets one, with exit_reason "abnormal".

Idle exit: an open session being watched counts as something to do (so a shell killed at any
time gets its end promptly), while a server connection is closed after `idle_exit_seconds`
without deliveries; the agent itself exits once nothing is pending and no session is open for
`idle_exit_seconds`, handing over without a gap (`doorbell`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import oneiric_session.agent.clock as agent_clock
from oneiric_session.agent.credentials import Credentials
from oneiric_session.agent.destinations import Destinations
from oneiric_session.agent.doorbell import Doorbell
from oneiric_session.agent.watch import SessionWatch
from oneiric_session.agent.worker import Client, ClientFactory, Tally
from oneiric_session.config.sources import DEFAULT_IDLE_EXIT_SECONDS
from oneiric_session.errors import SpoolError
from oneiric_session.spool import DEAD_AUTH, OpenSession, Spool, SpooledEvent
from oneiric_session.tracking.destination import Destination
from oneiric_session.wakeup import AgentLock, WakeupListener

__all__ = ["DeliveryAgent", "ReplayResult", "run_agent", "uncapped_spool"]

logger = logging.getLogger("oneiric_session.agent")

# Fallback poll when no wake-up arrives (a shell that could not reach the socket, a dead pid).
POLL_SECONDS = 1.0
# Wake-ups arriving within this long of the agent's last look are taken in together.
GATHER_SECONDS = 0.005
# At most this long between releases of the outbox's files taken in (one fsync for all of them),
# while shells keep writing: a power loss then re-sends at most this much, never loses it.
RELEASE_SECONDS = 1.0
# How long a handover waits for the rows in flight to be answered: below `spool replay`'s 15 s wait.
HANDOVER_GRACE_SECONDS = 10.0
# How long a stop (SIGTERM, SIGINT, SIGHUP) waits for them: an answer cut off would be sent again
# by the next agent, a second session at a server not idempotent on event_id. A second signal
# stops at once.
STOP_GRACE_SECONDS = 2.0


def _default_client(destination: Destination, token: Callable[[], str | None]) -> Client:
    from oneiric_session.transport import SessionBuddyClient  # imports mcp: only here, in the agent

    return SessionBuddyClient(destination, token=token)


def uncapped_spool(path: os.PathLike[str] | str) -> Spool:
    """The agent's view of a spool: caps are the shells' job (each append enforces its own settings).

    Not durable against power loss (no fsync per commit): what such a loss can undo is an
    acknowledgement, a failure count or a dead letter, and the row is then sent again (to a
    server idempotent on event_id, no second session) or refused again. An "abnormal" end it
    appends is appended again: the dead shell's pid is still seen dead after a reboot.
    """
    return Spool(path, max_rows=2**62, max_bytes=2**62, max_age_seconds=float("inf"), durable=False)


@dataclass(frozen=True)
class ReplayResult:
    delivered: int
    remaining: int
    dead_lettered: int


class DeliveryAgent:
    """Delivers one spool. `serve()` is the long-running agent; `replay()` drains once in the foreground."""

    def __init__(
        self,
        spool: Spool,
        *,
        tokens: Mapping[str, str] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        client_factory: ClientFactory = _default_client,
        idle_exit_seconds: float = DEFAULT_IDLE_EXIT_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        progress: Callable[[int], None] | None = None,
        on_answer: Callable[[SpooledEvent], None] | None = None,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
    ) -> None:
        self.spool = spool
        self.stop_grace_seconds = stop_grace_seconds
        self._credentials = Credentials(tokens, secrets)
        self.idle_exit_seconds = idle_exit_seconds
        self.poll_seconds = poll_seconds
        self._mono = monotonic
        self._wall = wall
        self._tally = Tally(progress=progress)
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()  # stop() or a hand-over: cuts every retry wait short
        self._destinations = Destinations(
            spool,
            credentials=self._credentials,
            client_factory=client_factory,
            mono=monotonic,
            wall=wall,
            tally=self._tally,
            stop=self._stop,
            poll_seconds=poll_seconds,
            changed=self._changed.set,
            # Run after each answer, before its acknowledgement: the crash window exactly-once must
            # survive, where tests kill the agent (tests/support/killing_agent.py).
            on_answer=on_answer,
        )
        self._watch = SessionWatch(spool, wall=wall, on_end=self._changed.set)
        self._intake_error: str | None = None  # the last reason the outbox could not be taken in
        self._released_at = 0.0  # monotonic: when the outbox's taken files were last released
        self._unreleased = False  # records taken in since then (their files wait for a release)
        self._watched: list[OpenSession] = []  # the open sessions the last watch found
        self._watched_at: float | None = None  # monotonic: when

    @property
    def delivered(self) -> int:
        return self._tally.delivered

    @property
    def dead_lettered(self) -> int:
        return self._tally.dead_lettered

    # -- credentials ----------------------------------------------------------

    def update_tokens(self, tokens: Mapping[str, str]) -> int:
        """Take tokens (at start, then from each wake-up); a new one requeues the auth dead letters.

        A token the server refused never replaces another (`Credentials.take_tokens`). Returns
        how many dead letters were requeued.
        """
        fresh = self._credentials.take_tokens(tokens)
        if not fresh:
            return 0
        for key in fresh:
            worker = self._destinations.workers.get(key)
            if worker is not None and worker.auth_error:
                worker.auth_error = None
                self._destinations.publish()
        try:
            requeued = self.spool.requeue_dead(DEAD_AUTH)
        except SpoolError as exc:
            logger.warning("could not requeue authentication dead letters: %s", exc)
            return 0
        if requeued:
            logger.info("a new token arrived: %d authentication dead letter(s) requeued", requeued)
            self._changed.set()
        return requeued

    def update_secrets(self, secrets: Mapping[str, Mapping[str, str]]) -> None:
        """Take secret server.env values and url passwords (at start, then from each wake-up); a
        destination whose secrets changed is tried again at once (a failing one connects anew with
        them: `DestinationWorker.drain`)."""
        for key in self._credentials.take_secrets(secrets):
            worker = self._destinations.workers.get(key)
            if worker is not None:
                worker.retry_at = 0.0
                self._changed.set()

    def take_in(self) -> None:
        """Take the records the shells wrote into the spool (`Intake.take_in`), and release their
        files once nothing new came in, or every RELEASE_SECONDS under a stream of shells, or at
        once while a destination fails (its exit notices count the files). A failure is logged
        once (the records stay in the outbox) and tried again at the next wake-up or poll."""
        try:
            taken = self.spool.take_in(sending=self._destinations.sending())
            self._unreleased = self._unreleased or bool(taken)
            failing = self._destinations.failing()
            now = self._mono()
            due = not taken or failing or now - self._released_at >= RELEASE_SECONDS
            if self._unreleased and due:
                self.spool.release_taken()
                self._released_at, self._unreleased = now, False
        except SpoolError as exc:
            if str(exc) != self._intake_error:
                logger.warning("the shells' records cannot be taken in: %s", exc)
            self._intake_error = str(exc)
            return
        self._intake_error = None
        if taken and failing:
            self._destinations.publish()  # the count of what waits for a failing destination changed

    # -- abnormal ends --------------------------------------------------------

    def watch_sessions(self) -> list[OpenSession]:
        """Check the pid of every open session; end the dead ones as "abnormal". The ones still open."""
        self._watched = self._watch.check()
        self._watched_at = self._mono()
        return self._watched

    def _watch_at_most_every(self, seconds: float) -> list[OpenSession]:
        """`watch_sessions()`, or what it found last when that was less than `seconds` ago."""
        if self._watched_at is None or self._mono() - self._watched_at >= seconds:
            return self.watch_sessions()
        return self._watched

    # -- the long-running agent -----------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    async def serve(self, lock: AgentLock, listener: WakeupListener | None = None) -> None:
        """Deliver until idle for `idle_exit_seconds` (or stop()). The caller holds `lock`."""
        doorbell = Doorbell(self.spool, lock, listener, self._changed.set)
        doorbell.open()
        _rekey(self.spool)
        self._destinations.publish()  # nothing known yet: a dead agent's view is not this one's
        self.update_tokens(self._credentials.initial_tokens)
        idle_since: float | None = None
        try:
            while not self._stop.is_set():
                wakeup = doorbell.drain()
                if wakeup is not None:
                    self.update_secrets(wakeup.secrets)
                    self.update_tokens(wakeup.tokens)
                    if wakeup.handover:
                        logger.info("stepping aside for a foreground replay")
                        await self._finish_in_flight(HANDOVER_GRACE_SECONDS)
                        return
                self._changed.clear()
                self.take_in()
                open_sessions = self._watch_at_most_every(self.poll_seconds)
                pending = self._destinations.schedule(replaying=False)
                await self._destinations.close_idle_clients(self.idle_exit_seconds)
                busy = bool(self._destinations.tasks() or open_sessions or pending)
                now = self._mono()
                if busy:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= self.idle_exit_seconds:
                    if doorbell.hand_over():
                        return
                    doorbell.open()
                    idle_since = None
                    continue
                idle_at = None if idle_since is None else idle_since + self.idle_exit_seconds
                moments = [*self._destinations.backoffs(now), self._destinations.due_at, idle_at]
                with contextlib.suppress(TimeoutError):  # sleep until then, or until woken
                    async with asyncio.timeout(
                        agent_clock.sleep_seconds(moments, now=now, poll=self.poll_seconds)
                    ):
                        await self._changed.wait()
                # At most one look every GATHER_SECONDS: the wake-ups of a stream of shells gather,
                # so one look takes in many records (each look costs a few queries); a wake-up after
                # a quiet moment is looked at at once.
                await asyncio.sleep(max(0.0, now + GATHER_SECONDS - self._mono()))
            await self._finish_in_flight(self.stop_grace_seconds)  # stop(): the answers on their way count
        finally:
            try:
                await self._shutdown()
            finally:
                doorbell.close()  # even when a second signal cut the shutdown short

    async def _finish_in_flight(self, grace_seconds: float) -> None:
        """Let each worker of a healthy destination finish the rows it is sending (at most
        `grace_seconds`), so the next deliverer never sends a row this one sent already; then
        nothing more is started.

        A destination that is failing is not waited for: its call in flight is a retry, and trying
        again now is what the replay is for; it is cancelled, as on any stop, and a server
        idempotent on event_id absorbs a repeat. A retry waiting between tries ends at once
        (`RetryPolicy`'s stop), leaving its row as it was.
        """
        self._stop.set()
        workers = self._destinations.workers.values()
        healthy = [w.task for w in workers if w.task is not None and not w.failures]
        if healthy:
            await asyncio.wait(healthy, timeout=grace_seconds)

    async def _shutdown(self) -> None:
        tasks = self._destinations.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each worker's end, whatever it was
        await self._destinations.close_idle_clients(self.idle_exit_seconds, force=True)
        with contextlib.suppress(SpoolError):
            self.spool.release_taken()  # (left behind, they would only wait for the next agent)

    # -- the foreground replay ------------------------------------------------

    async def replay(self, only: str | None = None) -> ReplayResult:
        """Deliver every pending row now (of destination `only`, when given), without waiting out
        back-offs. The caller holds the lock."""
        _rekey(self.spool)
        self.update_tokens(self._credentials.initial_tokens)
        try:
            while not self._stop.is_set():
                self.take_in()
                self.watch_sessions()
                self._destinations.schedule(replaying=True, only=only)
                if not self._destinations.tasks():
                    break
                before = (self.delivered, self.dead_lettered, self.spool.stats().depth)
                await asyncio.gather(*self._destinations.tasks(), return_exceptions=True)
                if (self.delivered, self.dead_lettered, self.spool.stats().depth) == before:
                    break  # a round that changed nothing would change nothing again
            remaining = self.spool.stats().depth if only is None else self.spool.waiting(only)
        finally:
            await self._shutdown()
        return ReplayResult(delivered=self.delivered, remaining=remaining, dead_lettered=self.dead_lettered)


def _rekey(spool: Spool) -> None:
    """Rows an older version spooled under another key for their destination (`Spool.rekey`)."""
    try:
        moved = spool.rekey()
    except SpoolError as exc:
        logger.warning("the spool's destinations could not be brought up to date: %s", exc)
        return
    if moved:
        logger.info("%d destination(s) spooled by an older version brought up to date", moved)


async def run_agent(agent: DeliveryAgent, lock: AgentLock, listener: WakeupListener | None) -> None:
    """Serve with SIGTERM/SIGINT/SIGHUP turned into a clean stop (the calls in flight answered,
    within the agent's `stop_grace_seconds`); a second signal stops at once."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    cut_short = False

    def on_signal() -> None:
        nonlocal cut_short
        if not agent.stopping:
            agent.stop()
        elif serving is not None and not cut_short:
            cut_short = True
            serving.cancel()  # the rows in flight stay in the spool, for the next agent

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal)
    try:
        await agent.serve(lock, listener)
    except asyncio.CancelledError:
        if not cut_short:
            raise
