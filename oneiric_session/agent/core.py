"""The delivery agent: one process per spool that sends spooled events to their servers.

Shells only append to the spool and wake the agent (see `wakeup`). The agent holds
the spool's lock, keeps one `SessionBuddyClient` per destination warm across
shells, and per destination delivers the oldest due rows first, up to a window
of calls in flight on the one session (`pipeline`): a start's answer maps the
local handle to the server's session id (`Spool.ack_start`, or `ack_batch` for
many answers at once), an end is sent only once its start is mapped, carrying
the server's id. A row leaves the spool only after the server answered, so a
kill -9 at any moment loses nothing; a crash between the answer and the
acknowledgement re-sends the rows in flight or not yet committed. The bundled
server is idempotent on `event_id`, so that makes no second session; the real
Session-Buddy 0.23.0 is not (docs/architecture.md).

Transient failures back off (per destination, capped exponential, beyond the
transport's own retries); refusals become dead letters with the server's message;
an authentication failure is a dead letter of category "auth", requeued when a
different token for that destination arrives. Tokens live in this process's
memory only: from the spawning shell's environment, then from each wake-up, each
keyed by the destination it was given for; a destination with no token gets none
(never another destination's, never a default).

It also watches the pids of open sessions (`watch`): a shell that died without an end
(kill -9, a crash, a reboot) gets one, with exit_reason "abnormal" and the
duration up to the last moment it was seen alive.

Idle exit: an open session being watched counts as something to do (so a shell
killed at any time gets its end promptly), while the server connection is closed
after `idle_exit_seconds` without deliveries; the agent itself exits once nothing
is pending and no session is open for `idle_exit_seconds`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import oneiric_session.agent.clock as agent_clock
import oneiric_session.agent.pipeline as pipeline
from oneiric_session.agent.watch import SessionWatch
from oneiric_session.config.sources import DEFAULT_IDLE_EXIT_SECONDS
from oneiric_session.delivery_status import META_DESTINATIONS, META_PID
from oneiric_session.destination import Destination
from oneiric_session.digest import sha256_hex
from oneiric_session.errors import (
    AuthenticationError,
    CircuitOpenError,
    DeliveryError,
    SpoolError,
    TransientDeliveryError,
)
from oneiric_session.resilience import capped_delay
from oneiric_session.spool import DEAD_AUTH, OpenSession, Spool, SpooledEvent
from oneiric_session.wakeup import AgentLock, WakeupListener

__all__ = [
    "KILL_AFTER_ANSWER_ENV",
    "DeliveryAgent",
    "ReplayResult",
    "run_agent",
    "uncapped_spool",
]

logger = logging.getLogger("oneiric_session.agent")

# Fallback poll when no wake-up arrives (a shell that could not reach the socket, a dead pid).
POLL_SECONDS = 1.0
# How long a handover waits for the rows in flight to be answered: below `spool replay`'s 15 s wait.
HANDOVER_GRACE_SECONDS = 10.0
# Test-only: "start" or "end" makes the agent SIGKILL itself right after the server answered such
# a row, before the spool acknowledgement (the crash window that exactly-once must survive);
# "start:N" at the N-th such answer (with a window of calls in flight and answers not committed).
KILL_AFTER_ANSWER_ENV = "ONEIRIC_SESSION_TEST_KILL_AFTER_ANSWER"


class Client(Protocol):
    """What the agent needs of `transport.SessionBuddyClient`."""

    @property
    def breaker_state(self) -> str: ...

    async def start_session(self, event: Mapping[str, Any]) -> str: ...

    async def end_session(self, event: Mapping[str, Any]) -> str: ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[Destination, Callable[[], str | None]], Client]


def _default_client(destination: Destination, token: Callable[[], str | None]) -> Client:
    from oneiric_session.transport import SessionBuddyClient  # imports mcp: only here, in the agent

    return SessionBuddyClient(destination, token=token)


def _digest(token: str) -> str:
    """What the agent remembers of a refused token (never the token itself)."""
    return sha256_hex(token.encode())


class _BackOff(Exception):
    """Raised out of `pipeline.drain` when a destination must back off before its next row is sent."""


def _window(state: _DestinationState, row: SpooledEvent) -> int:
    """Calls allowed in flight to this row's destination (`pipeline.window_size`)."""
    configured = row.destination.tuning.window if row.destination is not None else 0
    return pipeline.window_size(configured, getattr(state.client, "server_name", None))


def uncapped_spool(path: os.PathLike[str] | str) -> Spool:
    """The agent's view of a spool: caps are the shells' job (each append enforces its own settings).

    Not durable against power loss (no fsync per commit): what such a loss can undo is an
    acknowledgement, a failure count or a dead letter, and the row is then sent again (to a
    server idempotent on event_id, no second session) or refused again. An "abnormal" end it
    appends is appended again: the dead shell's pid is still seen dead after a reboot.
    """
    return Spool(path, max_rows=2**62, max_bytes=2**62, max_age_seconds=float("inf"), durable=False)


@dataclass
class _DestinationState:
    """Per-destination delivery state, in memory; its visible part is mirrored to the spool meta."""

    describe: str
    client: Client | None = None
    failures: int = 0  # consecutive transient failures
    retry_at: float = 0.0  # monotonic: no attempt before this
    last_error: str | None = None
    auth_error: str | None = None  # the server refused the token; cleared by a new token or a delivery
    failing_since: float | None = None  # wall clock
    last_used: float = 0.0  # monotonic
    # Rows this agent backed off (row id, event id): due again when retry_at passes, in monotonic time.
    deferred: set[tuple[int, str]] = field(default_factory=set, repr=False)
    worker: asyncio.Task[None] | None = field(default=None, repr=False)

    def visible(self) -> dict[str, Any]:
        return {
            "target": self.describe,
            "breaker": self.client.breaker_state if self.client is not None else "closed",
            "last_error": self.last_error,
            "auth_error": self.auth_error,
            "failing_since": self.failing_since,
            "consecutive_failures": self.failures,
        }


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
    ) -> None:
        self.spool = spool
        self._tokens: dict[str, str] = {}
        self._refused: collections.defaultdict[str, set[str]] = collections.defaultdict(set)  # digests
        self._initial_tokens = dict(tokens or {})
        # Secret server.env values per destination key: in memory only (destination.SECRET_REFERENCE).
        self._secrets: dict[str, dict[str, str]] = {k: dict(v) for k, v in (secrets or {}).items()}
        self._client_factory = client_factory
        self.idle_exit_seconds = idle_exit_seconds
        self.poll_seconds = poll_seconds
        self._mono = monotonic
        self._wall = wall
        self._progress = progress
        self._destinations: dict[str, _DestinationState] = {}
        self._published: str | None = None
        self._due_at: float | None = None  # monotonic: when the earliest row not yet due becomes due
        self._changed = asyncio.Event()
        self._watch = SessionWatch(spool, wall=wall, on_end=self._changed.set)
        self._stopping = False
        self._replaying = False
        self._kill_after_answer = os.environ.get(KILL_AFTER_ANSWER_ENV)
        self._answers_of_kind = 0  # answers of the kind the kill waits for
        self.delivered = 0
        self.dead_lettered = 0

    # -- tokens ---------------------------------------------------------------

    def token_for(self, key: str) -> str | None:
        """The token given for destination `key`, or None: never another destination's token."""
        return self._tokens.get(key)

    def update_tokens(self, tokens: Mapping[str, str]) -> int:
        """Take tokens (at start, then from each wake-up); a new one requeues the auth dead letters.

        A token the server refused never replaces another: a shell still holding an old token
        must not undo the new one a later shell brought. Returns how many were requeued.
        """
        fresh = {
            key: token
            for key, token in tokens.items()
            if token and self._tokens.get(key) != token and _digest(token) not in self._refused[key]
        }
        self._tokens.update(fresh)
        if not fresh:
            return 0
        for key in fresh:
            state = self._destinations.get(key)
            if state is not None and state.auth_error:
                state.auth_error = None
                self._publish()
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
        """Take secret server.env values (at start, then from each wake-up); a destination that was
        waiting for them is tried again at once."""
        for key, values in secrets.items():
            if values and self._secrets.get(key) != dict(values):
                self._secrets[key] = dict(values)
                state = self._destinations.get(key)
                if state is not None and state.client is None:
                    state.retry_at = 0.0
                    self._changed.set()

    # -- one row --------------------------------------------------------------

    def _state(self, key: str, destination: Destination) -> _DestinationState:
        state = self._destinations.get(key)
        if state is None:
            state = self._destinations[key] = _DestinationState(describe=destination.describe())
        if state.client is None:
            destination = destination.with_secrets(self._secrets.get(key))
            missing = destination.missing_secrets()
            if missing:
                raise TransientDeliveryError(
                    f"server.env {', '.join(missing)} is kept in memory only and this agent has not "
                    "received it yet: it waits for a shell (or `spool replay`) with these settings"
                )
            state.client = self._client_factory(destination, lambda: self.token_for(key))
        return state

    def _answered(self, row: SpooledEvent) -> None:
        kind, _, nth = (self._kill_after_answer or "").partition(":")
        if kind == row.kind:
            self._answers_of_kind += 1
            if self._answers_of_kind >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    async def _deliver(
        self, row: SpooledEvent, state: _DestinationState, acks: pipeline.Acknowledgements | None = None
    ) -> bool:
        """Send one row; False when the destination must back off (transient failure).

        The answer is acknowledged in the spool at once, or held in `acks` (committed in batches).
        """
        assert state.client is not None
        state.last_used = self._mono()
        try:
            if row.kind == "start":
                server_id = await state.client.start_session(row.arguments())
                self._answered(row)
                if acks is None:
                    self.spool.ack_start(row, server_id)
                else:
                    acks.start(row, server_id)
            else:
                await state.client.end_session(row.arguments())
                self._answered(row)
                if acks is None:
                    self.spool.ack_end(row)
                else:
                    acks.end(row)
        except AuthenticationError as exc:
            self._auth_failed(row, state, exc)
        except DeliveryError as exc:
            if exc.permanent:
                self._dead(row, str(exc))
            else:
                self._failed(row, state, exc)
                return False
        except SpoolError:
            raise
        except Exception as exc:  # a bug below us must not stop delivery: back off and say so
            logger.exception("unexpected error delivering %s %s", row.kind, row.handle)
            self._failed(row, state, exc)
            return False
        else:
            self.delivered += 1
            if state.failures or state.last_error:
                logger.info("delivering to %s again", state.describe)
            state.failures, state.last_error, state.failing_since = 0, None, None
            state.auth_error = None
            if self._progress is not None:
                self._progress(self.delivered)
        self._publish()
        return True

    def _dead(self, row: SpooledEvent, reason: str, category: str = "rejected", *, log: bool = True) -> None:
        if log:
            logger.warning(
                "%s of %s refused, kept as a dead letter (%s): %s", row.kind, row.handle, category, reason
            )
        self.spool.dead_letter(row, reason, category=category)
        self.dead_lettered += 1

    def _auth_failed(self, row: SpooledEvent, state: _DestinationState, exc: AuthenticationError) -> None:
        """Park the row until a new token arrives; say so once per refused token, not once per event."""
        token = self.token_for(row.destination_key)
        digest = _digest(token) if token else ""  # "": no token at all (never a token's digest)
        first = digest not in self._refused[row.destination_key]
        self._refused[row.destination_key].add(digest)
        state.auth_error = f"{exc} (events kept as dead letters until a new token arrives)"
        if first:
            logger.warning("authentication failed at %s: %s", state.describe, state.auth_error)
        self._dead(row, str(exc), DEAD_AUTH, log=False)

    def _failed(self, row: SpooledEvent, state: _DestinationState, exc: BaseException) -> None:
        tuning = row.destination.tuning if row.destination is not None else Destination().tuning
        state.failures += 1
        delay = capped_delay(
            max(tuning.wait_min_seconds, 0.5), tuning.multiplier, state.failures, tuning.wait_max_seconds
        )
        if isinstance(exc, CircuitOpenError):
            delay = max(delay, min(tuning.breaker_reset_seconds, tuning.wait_max_seconds))
        state.retry_at = self._mono() + delay
        message = str(exc) or type(exc).__name__
        if state.last_error is None:
            logger.warning("cannot deliver to %s (will retry): %s", state.describe, message)
        state.last_error = message
        if state.failing_since is None:
            state.failing_since = self._wall()
        self.spool.record_failure(row, message, self._wall() + delay)
        state.deferred.add((row.row_id, row.event_id))
        self._publish()

    # -- one destination ------------------------------------------------------

    async def _drain_destination(self, key: str) -> None:
        """Deliver this destination's due rows oldest first, up to its window of calls in flight
        (see `pipeline`), until none is left or it must back off."""

        def prepare(row: SpooledEvent) -> _DestinationState | None:
            if row.destination is None:
                self._dead(row, f"destination {key} is unknown to the spool")
                return None
            try:
                return self._state(key, row.destination)
            except TransientDeliveryError as exc:  # a secret not brought yet: back off, keep the row
                self._failed(row, self._destinations[key], exc)
                raise _BackOff from None

        with contextlib.suppress(_BackOff):
            await pipeline.drain(
                self.spool,
                key,
                # A replay sends rows still waiting out a back-off too: that is what it is for.
                due=float("inf") if self._replaying else None,
                stopping=lambda: self._stopping,
                prepare=prepare,
                deliver=self._deliver,
                window=_window,
            )

    def _worker_done(self, key: str, task: asyncio.Task[None]) -> None:
        state = self._destinations.get(key)
        if state is not None and state.worker is task:
            state.worker = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("delivery to %s stopped: %s", key, task.exception())
            if state is not None:
                state.retry_at = self._mono() + self.poll_seconds
        self._changed.set()

    def _schedule(self) -> int:
        """Start a worker for each destination with pending rows that is not busy or backing off."""
        started = 0
        now = self._mono()
        destinations = self.spool.pending_destinations()
        waits = None if self._replaying else self._due_waits(destinations)
        self._due_at = None
        for destination in destinations:
            key = destination.key
            state = self._destinations.setdefault(key, _DestinationState(describe=destination.describe()))
            if state.worker is not None or state.retry_at > now:
                continue
            if waits is not None:  # (a replay sends what is waiting out a back-off too)
                wait = waits.get(key)
                if wait is None:
                    continue  # nothing deliverable yet (ends wait for their start)
                if wait > 0:  # not due yet: the loop sleeps until then (or a wake-up)
                    self._due_at = min(self._due_at or float("inf"), now + wait)
                    continue
            task = asyncio.create_task(self._drain_destination(key), name=f"deliver-{key}")
            state.worker = task
            task.add_done_callback(functools.partial(self._worker_done, key))
            started += 1
        return started

    def _due_waits(self, destinations: list[Destination]) -> dict[str, float]:
        """Seconds until each destination's earliest deliverable row is due (0: now); see agent_clock."""
        return agent_clock.due_waits(
            self.spool,
            self._destinations.values(),
            destinations,
            mono=self._mono(),
            wall=self._wall(),
            floor=self.poll_seconds,
        )

    def _workers(self) -> list[asyncio.Task[None]]:
        return [s.worker for s in self._destinations.values() if s.worker is not None]

    async def _close_idle_clients(self, *, force: bool = False) -> None:
        now = self._mono()
        for state in self._destinations.values():
            if state.client is None or state.worker is not None:
                continue
            if force or now - state.last_used >= self.idle_exit_seconds:
                client, state.client = state.client, None
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _publish(self) -> None:
        """Mirror breaker state and last errors to the spool meta (only when they change)."""
        visible = {key: s.visible() for key, s in sorted(self._destinations.items())}
        text = json.dumps(visible, sort_keys=True)
        if text != self._published:
            self.spool.meta_set(META_DESTINATIONS, text)
            self._published = text

    # -- abnormal ends --------------------------------------------------------

    def watch_sessions(self) -> list[OpenSession]:
        """Check the pid of every open session; end the dead ones as "abnormal". The ones still open."""
        return self._watch.check()

    # -- the long-running agent -----------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    async def serve(self, lock: AgentLock, listener: WakeupListener | None = None) -> None:
        """Deliver until idle for `idle_exit_seconds` (or stop()). The caller holds `lock`."""
        loop = asyncio.get_running_loop()
        listening = listener is not None and listener.open()
        if listener is not None and listening:
            loop.add_reader(listener.fileno(), self._changed.set)
        self.spool.meta_set(META_PID, str(os.getpid()))
        self.update_tokens(self._initial_tokens)
        idle_since: float | None = None
        try:
            while not self._stopping:
                if listener is not None and listening:
                    wakeup = listener.drain()
                    self.update_secrets(wakeup.secrets)
                    self.update_tokens(wakeup.tokens)
                    if wakeup.handover:
                        logger.info("stepping aside for a foreground replay")
                        await self._finish_in_flight()
                        return
                self._changed.clear()
                open_sessions = self.watch_sessions()
                self._schedule()
                await self._close_idle_clients()
                busy = bool(self._workers() or open_sessions or self.spool.pending_destinations())
                now = self._mono()
                if busy:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= self.idle_exit_seconds:
                    if listener is not None and listening:
                        loop.remove_reader(listener.fileno())
                    listening = False
                    if self._hand_over(lock, listener):
                        return
                    listening = listener is not None and listener.open()
                    if listener is not None and listening:
                        loop.add_reader(listener.fileno(), self._changed.set)
                    idle_since = None
                    continue
                await self._wait(self._next_timeout(idle_since))
        finally:
            if listener is not None and listening:
                with contextlib.suppress(Exception):
                    loop.remove_reader(listener.fileno())
            await self._shutdown()
            with contextlib.suppress(SpoolError):
                if lock.held:
                    self.spool.meta_set(META_PID, None)
            if listener is not None:
                listener.close()

    def _hand_over(self, lock: AgentLock, listener: WakeupListener | None) -> bool:
        """Idle exit without a gap: unbind, unlock, then look once more. True when this agent may exit.

        A shell that appended just before we unbound finds its row in the last look; one that
        appended after sees nobody listening and spawns an agent that can take the lock.
        """
        if listener is not None:
            listener.close()
        with contextlib.suppress(SpoolError):
            self.spool.meta_set(META_PID, None)
        lock.release()
        try:
            work = bool(self.spool.pending_destinations() or self.spool.open_sessions())
        except SpoolError:
            work = False
        try:
            again = work and lock.acquire()
        except OSError as exc:  # the spool became unusable or foreign meanwhile: exit, say why
            logger.warning("not taking the lock again: %s", exc)
            again = False
        if again:
            self.spool.meta_set(META_PID, str(os.getpid()))
            return False
        return True

    def _next_timeout(self, idle_since: float | None) -> float:
        now = self._mono()
        timeout = self.poll_seconds
        for state in self._destinations.values():
            if state.worker is None and state.retry_at > now:
                timeout = min(timeout, state.retry_at - now)
        if self._due_at is not None:
            timeout = min(timeout, self._due_at - now)
        if idle_since is not None:
            timeout = min(timeout, max(0.0, idle_since + self.idle_exit_seconds - now))
        return max(timeout, 0.001)

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    async def _finish_in_flight(self) -> None:
        """Let each worker of a healthy destination finish the row it is sending (bounded), so the
        next deliverer never sends a row this one sent already; then nothing more is started.

        A destination that is failing is not waited for: its call in flight is a retry (often
        inside the transport's own back-off), and trying again now is what the replay is for;
        it is cancelled, as on any stop, and a server idempotent on event_id absorbs a repeat.
        """
        self._stopping = True
        healthy = [s.worker for s in self._destinations.values() if s.worker is not None and not s.failures]
        if healthy:
            await asyncio.wait(healthy, timeout=HANDOVER_GRACE_SECONDS)

    async def _shutdown(self) -> None:
        for task in self._workers():
            task.cancel()
        for task in self._workers():
            with contextlib.suppress(BaseException):
                await task
        await self._close_idle_clients(force=True)

    # -- the foreground replay ------------------------------------------------

    async def replay(self) -> ReplayResult:
        """Deliver every pending row now, without waiting out back-offs. The caller holds the lock."""
        self._replaying = True
        self.update_tokens(self._initial_tokens)
        try:
            while not self._stopping:
                self.watch_sessions()
                if not self._schedule():
                    break
                await asyncio.gather(*self._workers(), return_exceptions=True)
            remaining = self.spool.stats().depth
        finally:
            await self._shutdown()
        return ReplayResult(delivered=self.delivered, remaining=remaining, dead_lettered=self.dead_lettered)


async def run_agent(agent: DeliveryAgent, lock: AgentLock, listener: WakeupListener | None) -> None:
    """Serve with SIGTERM/SIGINT/SIGHUP turned into a clean stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, agent.stop)
    await agent.serve(lock, listener)
