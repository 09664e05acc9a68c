"""One destination's delivery, in the agent: its client, its retry policy and breaker, draining
its due rows (`pipeline`), sending one row, and what an error means for the row (`classify`).

The worker is the one owner of retrying (`resilience.RetryPolicy`): a row's call gets the
configured attempts through the destination's breaker (the client makes one attempt per call);
once they are spent the destination backs off and the row keeps its place. Refusals become dead
letters with the server's message; an authentication failure is a dead letter of category
"auth", requeued by the agent when a different token for that destination arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import oneiric_session.agent.pipeline as pipeline
from oneiric_session.agent.credentials import Credentials
from oneiric_session.agent.resilience import FailureRun, RetryPolicy, Stopped
from oneiric_session.agent.status import DestinationStatus
from oneiric_session.errors import AuthenticationError, DeliveryError, SpoolError, TransientDeliveryError
from oneiric_session.spool import DAMAGED, DEAD_AUTH, DEAD_DAMAGED, DEAD_REJECTED, Spool, SpooledEvent
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.url_rules import secret_named

__all__ = ["Client", "ClientFactory", "DestinationWorker", "Outcome", "Tally", "bug_report", "classify"]

logger = logging.getLogger("oneiric_session.agent")


class Client(Protocol):
    """What the agent needs of `transport.SessionBuddyClient`: one attempt per call."""

    async def start_session(self, event: Mapping[str, Any]) -> str: ...

    async def end_session(self, event: Mapping[str, Any]) -> str: ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[Destination, Callable[[], str | None]], Client]


class Outcome(enum.Enum):
    """What a failed delivery means for its row."""

    RETRY = "retry"  # transient (or a bug below us): the destination backs off, the row waits
    REFUSED = "refused"  # the server refused this event: a dead letter with its message
    AUTH = "auth"  # the server refused the token: a dead letter until a new token arrives


def classify(exc: BaseException) -> Outcome:
    if isinstance(exc, AuthenticationError):
        return Outcome.AUTH
    if isinstance(exc, DeliveryError) and exc.permanent:
        return Outcome.REFUSED
    return Outcome.RETRY


@dataclass
class Tally:
    """The agent's counts across destinations (`spool replay` prints them)."""

    delivered: int = 0
    dead_lettered: int = 0
    progress: Callable[[int], None] | None = None


class _BackOff(Exception):
    """Raised out of `pipeline.drain` when the destination must back off before its next row."""


@dataclass
class DestinationWorker:
    """Delivery state of one destination, in memory; `status()` is what the agent publishes."""

    key: str
    describe: str
    spool: Spool
    credentials: Credentials
    client_factory: ClientFactory
    mono: Callable[[], float]
    wall: Callable[[], float]
    tally: Tally
    policy: RetryPolicy  # attempts, waits, the breaker and the back-off: the one owner of retrying
    changed: Callable[[], None]  # the published status may have changed
    # Called with each answered row before its acknowledgement (tests kill the agent there).
    on_answer: Callable[[SpooledEvent], None] | None = None
    client: Client | None = None
    # Consecutive calls failed transiently, their tries spent (calls failing together count once).
    run: FailureRun = field(default_factory=FailureRun, repr=False)
    retry_at: float = 0.0  # monotonic: no attempt before this
    last_error: str | None = None
    auth_error: str | None = None  # the server refused the token; cleared by a new token or a delivery
    failing_since: float | None = None  # wall clock
    last_used: float = 0.0  # monotonic
    # Rows this agent backed off (row id, event id): due again when retry_at passes (agent.clock).
    deferred: set[tuple[int, str]] = field(default_factory=set, repr=False)
    # The secrets `client` was made with (server.env values, the url's password), and the last ones
    # a delivery succeeded with; `_connect` uses `next_secrets` once, when set.
    client_secrets: dict[str, str] | None = field(default=None, repr=False)
    working_secrets: dict[str, str] | None = field(default=None, repr=False)
    next_secrets: dict[str, str] | None = field(default=None, repr=False)
    # The sessions the caps must spare (`retention.enforce`, `Destinations.sending`): those of the
    # rows the drain under way fetched, and those whose start was sent without an answer (a timeout,
    # a dropped connection, a call cancelled in flight: the server may have recorded it) until it
    # is answered or refused.
    sending: set[str] = field(default_factory=set, repr=False)
    unanswered: set[str] = field(default_factory=set, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def failures(self) -> int:
        return self.run.length

    def status(self) -> DestinationStatus:
        return DestinationStatus(
            target=self.describe,
            breaker=self.policy.breaker.state,
            last_error=self.last_error,
            auth_error=self.auth_error,
            failing_since=self.failing_since,
            consecutive_failures=self.failures,
        )

    async def drain(self, *, replaying: bool, stopping: Callable[[], bool]) -> None:
        """Deliver the due rows oldest first, up to the window of calls in flight (`pipeline`),
        until none is left or the destination must back off."""
        other = self._other_secrets() if self.client is not None and self.failures else None
        if other is not None:  # (no call of this destination is in flight here)
            await self.close_client()
            self.next_secrets = other
        try:
            await self._drain(replaying=replaying, stopping=stopping)
        finally:
            self.sending.clear()  # every answer this drain received is recorded

    async def _drain(self, *, replaying: bool, stopping: Callable[[], bool]) -> None:
        with contextlib.suppress(_BackOff):
            await pipeline.drain(
                self.spool,
                self.key,
                # A replay sends rows still waiting out a back-off too: that is what it is for.
                due=float("inf") if replaying else None,
                stopping=stopping,
                prepare=self._prepare,
                deliver=self.deliver,
                window=self._window,
                sending=self.sending,
            )

    def _prepare(self, row: SpooledEvent) -> DestinationWorker | None:
        if row.destination is None:
            self._dead(row, f"destination {self.key} is unknown to the spool")
            return None
        if row.damaged:
            self._dead(row, DAMAGED, DEAD_DAMAGED)
            return None
        try:
            self._connect(row.destination)
        except TransientDeliveryError as exc:  # a secret not brought yet: back off, keep the row
            self._failed(row, exc)
            raise _BackOff from None
        return self

    def _connect(self, destination: Destination) -> None:
        if self.client is not None:
            return
        secrets, self.next_secrets = self.next_secrets or self._secrets(), None
        destination = destination.with_secrets(secrets)
        missing = destination.missing_secrets()
        if missing:
            named = ", ".join(secret_named(n) for n in missing)
            raise TransientDeliveryError(
                f"{named}: kept in memory only, and this agent has not received it yet: it waits for "
                "a shell (or `spool replay`) with these settings"
            )
        self.client = self.client_factory(destination, lambda: self.credentials.token(self.key))
        self.client_secrets = secrets

    def _secrets(self) -> dict[str, str] | None:
        return self.credentials.secrets(self.key)

    def _other_secrets(self) -> dict[str, str] | None:
        """Failing: other secrets to connect with, if any are known. A shell may bring newer ones (a
        rotated password) or older ones (a shell started before the rotation, leaving): so a
        connection made with the ones that last worked tries the last ones a shell brought, and any
        other connection tries the ones that last worked. A working connection is never changed."""
        memory, working, used = self._secrets(), self.working_secrets, self.client_secrets
        order = [memory, working] if used == working else [working, memory]
        return next((s for s in order if s is not None and s != used), None)

    def _window(self, _state: DestinationWorker, row: SpooledEvent) -> int:
        """Calls allowed in flight to this destination (`pipeline.window_size`); one while the breaker
        is not closed: its probe goes alone (a second call would find the circuit open, and the
        back-off that follows would cancel the probe, every time)."""
        if self.policy.breaker.state != "closed":
            return 1
        configured = row.destination.tuning.window if row.destination is not None else 0
        return pipeline.window_size(configured, getattr(self.client, "server_name", None))

    async def deliver(
        self, row: SpooledEvent, _state: DestinationWorker, acks: pipeline.Acknowledgements | None = None
    ) -> bool:
        """Send one row; False when the destination must back off (transient failure).

        The answer is acknowledged in the spool at once, or held in `acks` (committed in batches).
        """
        client = self.client
        assert client is not None
        self.last_used = self.mono()
        before = self.status()
        mark = self.run.mark()
        try:
            if row.kind == "start":
                self.unanswered.add(row.handle)  # until answered or refused
                server_id = await self.policy.call(lambda: client.start_session(row.arguments()))
                self.unanswered.discard(row.handle)
                self._answered(row)
                if acks is None:
                    self.spool.ack_start(row, server_id)
                else:
                    acks.start(row, server_id)
            else:
                await self.policy.call(lambda: client.end_session(row.arguments()))
                self._answered(row)
                if acks is None:
                    self.spool.ack_end(row)
                else:
                    acks.end(row)
        except SpoolError:
            raise
        except Stopped:  # the agent is stopping: this row stays as it was, the calls in flight finish
            return True
        except Exception as exc:
            outcome = classify(exc)
            if outcome is Outcome.AUTH:
                self._auth_failed(row, exc)
            elif outcome is Outcome.REFUSED:
                self._dead(row, str(exc))
            else:
                if not isinstance(exc, DeliveryError):  # a bug below us must not stop delivery
                    logger.error(
                        "unexpected error delivering %s %s:\n%s", row.kind, row.handle, bug_report(exc)
                    )
                # One dropped connection fails the whole window at once: one failure towards the
                # back-off, not one a row (`FailureRun`).
                self._failed(row, exc, mark)
                return False
        else:
            self._succeeded()
        if self.status() != before:  # (a healthy destination's stays as it was: nothing to publish)
            self.changed()
        return True

    def _answered(self, row: SpooledEvent) -> None:
        if self.on_answer is not None:
            self.on_answer(row)

    def _succeeded(self) -> None:
        self.working_secrets = self.client_secrets
        self.tally.delivered += 1
        if self.failures or self.last_error:
            logger.info("delivering to %s again", self.describe)
        self.run.succeeded()
        self.last_error, self.failing_since = None, None
        self.auth_error = None
        if self.tally.progress is not None:
            self.tally.progress(self.tally.delivered)

    def _dead(
        self, row: SpooledEvent, reason: str, category: str = DEAD_REJECTED, *, log: bool = True
    ) -> None:
        if log:
            logger.warning(
                "%s of %s refused, kept as a dead letter (%s): %s", row.kind, row.handle, category, reason
            )
        self.spool.dead_letter(row, reason, category=category)
        self.unanswered.discard(row.handle)
        self.tally.dead_lettered += 1

    def _auth_failed(self, row: SpooledEvent, exc: Exception) -> None:
        """Park the row until a new token arrives; say so once per refused token, not once per event.

        A refusal of a token another replaced while the call was on its way leaves the row to be
        sent again, with the new token (that token's refusal is what parks it)."""
        self.unanswered.discard(row.handle)  # refused: the server recorded nothing
        sent = exc.token_digest if isinstance(exc, AuthenticationError) else None
        if sent is not None and sent != self.credentials.current(self.key):
            self.credentials.refuse(self.key, sent)  # never taken back from a shell still holding it
            return
        first = self.credentials.refuse(self.key)
        self.auth_error = f"{exc} (events kept as dead letters until a new token arrives)"
        if first:
            logger.warning("authentication failed at %s: %s", self.describe, self.auth_error)
        self._dead(row, str(exc), DEAD_AUTH, log=False)

    def _failed(self, row: SpooledEvent, exc: BaseException, mark: int | None = None) -> None:
        """Back off after `row` failed (sent at `mark`; None: a failure of its own)."""
        self.run.failed(self.run.mark() if mark is None else mark)
        delay = self.policy.backoff_seconds(self.run.length, exc)  # (>= 1: a failure is counted first)
        self.retry_at = self.mono() + delay
        if isinstance(exc, DeliveryError):  # (ours are worded to hold no secret; a foreign one's may)
            message = str(exc) or type(exc).__name__
        else:
            message = f"unexpected {type(exc).__name__} (the agent's log says where)"
        if self.last_error is None:
            logger.warning("cannot deliver to %s (will retry): %s", self.describe, message)
        self.last_error = message
        if self.failing_since is None:
            self.failing_since = self.wall()
        self.spool.record_failure(row, message, self.wall() + delay)
        self.deferred.add((row.row_id, row.event_id))
        self.changed()

    async def close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def bug_report(exc: BaseException) -> str:
    """A bug's traceback for the log: its frames and types, and only our own errors' messages
    (worded to hold no secret); a foreign error's message may repeat a token or a url it was handed."""
    from oneiric_session.common.scrub import redacted_traceback

    hidden = "(message not shown: it may repeat a secret)"
    return redacted_traceback(
        exc, lambda each: str(each) if isinstance(each, DeliveryError | SpoolError) else hidden
    )
