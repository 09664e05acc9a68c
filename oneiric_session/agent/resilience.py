"""The one retry policy of a destination (`RetryPolicy`, on tenacity) and its circuit breaker,
both on injected time so tests never wait. The agent's destination worker owns one of each;
the transport makes one attempt per call.

The schedule after a failure, with the default tuning (docs/architecture.md): a row gets
`attempts` tries, `backoff()` apart; when they are spent, the destination waits
`backoff_seconds(failures)` before its next row; `breaker_threshold` failed tries in a row open
the breaker, and then nothing is tried until the breaker lets one probe through.

The breaker is our own: pybreaker, aiobreaker, purgatory and circuitbreaker
each lack one of a single-probe half-open state, asyncio support, or an
injectable clock, and all three are needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import tenacity

from oneiric_session.errors import CircuitOpenError, TransientDeliveryError
from oneiric_session.tracking.destination import Tuning

__all__ = ["CircuitBreaker", "FailureRun", "RetryPolicy", "Stopped", "backoff", "is_retryable", "retrying"]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]
Sleep = Callable[[float], Awaitable[None]]


def is_retryable(exc: BaseException) -> bool:
    """Only transient delivery errors are retried; an open circuit is not (it would only wait)."""
    return isinstance(exc, TransientDeliveryError) and not isinstance(exc, CircuitOpenError)


def capped_delay(first_seconds: float, multiplier: float, attempt: int, cap_seconds: float) -> float:
    """`first * multiplier**(attempt-1)`, capped; never overflows, however long the outage lasts."""
    try:
        return min(cap_seconds, first_seconds * multiplier ** (attempt - 1))
    except OverflowError:
        return cap_seconds


def backoff(
    tuning: Tuning, jitter: Callable[[float, float], float] = random.uniform
) -> Callable[[tenacity.RetryCallState], float]:
    """Wait before retry n: min(max, wait_min * multiplier**(n-1) + uniform(0, wait_min)).

    The jitter spreads clients that failed together; the cap bounds the wait.
    (tenacity's wait_exponential_jitter computes the same but renamed its
    arguments across the versions we accept.)
    """

    def wait(state: tenacity.RetryCallState) -> float:
        base = capped_delay(
            tuning.wait_min_seconds, tuning.multiplier, state.attempt_number, tuning.wait_max_seconds
        )
        return min(tuning.wait_max_seconds, base + jitter(0, tuning.wait_min_seconds))

    return wait


def retrying(
    tuning: Tuning, *, sleep: Sleep, jitter: Callable[[float, float], float] = random.uniform
) -> tenacity.AsyncRetrying:
    """`tuning.attempts` tries, capped exponential back-off with jitter, the last error re-raised as is."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(tuning.attempts),
        wait=backoff(tuning, jitter),
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=sleep,
        reraise=True,
    )


class FailureRun:
    """A run of consecutive failures, where calls in flight together that fail together count once.

    A call takes a `mark()` when it is sent. Its failure counts unless a failure of the current run
    was counted since (one dropped connection fails every call of the window at once), so an outage
    counts one failure per wave of calls, whatever the window. A success ends the run. The breaker
    counts failed tries with one, the destination worker failed calls (their tries spent) with another.
    """

    def __init__(self) -> None:
        self.length = 0
        self._counted = 0  # failures counted ever: what a mark is

    def mark(self) -> int:
        return self._counted

    def failed(self, mark: int, *, alone: bool = False) -> bool:
        """Count the failure of the call marked `mark` (`alone`: whatever failed since); True if counted."""
        if not alone and mark != self._counted and self.length > 0:
            return False  # it failed with a call already counted since it was sent
        self.length += 1
        self._counted += 1
        return True

    def succeeded(self) -> None:
        self.length = 0


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `reset_seconds`.

    Half-open lets exactly one probe through; other calls fail at once while it
    is in flight. The probe's success closes the circuit, its failure opens it
    again for another `reset_seconds`. Only errors `is_failure` accepts count;
    any other outcome (a success, or the server refusing an event) shows the
    server is reachable and counts as a success.

    Calls in flight together that fail together count once (`FailureRun`); a probe always counts.
    """

    def __init__(
        self,
        *,
        threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        is_failure: Callable[[BaseException], bool] = lambda exc: isinstance(exc, TransientDeliveryError),
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self._threshold = threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._is_failure = is_failure
        self._run = FailureRun()
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probe_in_flight or self._clock() - self._opened_at >= self._reset_seconds:
            return "half_open"
        return "open"

    @property
    def failures(self) -> int:
        """Consecutive failed tries (tries failing together count once)."""
        return self._run.length

    @property
    def retry_after_seconds(self) -> float:
        """Seconds until a probe may go (0 when calls are let through now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_seconds - self._clock())

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` unless the circuit is open; record its outcome."""
        probe = self._admit()
        mark = self._run.mark()
        try:
            result = await operation()
        except Exception as exc:
            if self._is_failure(exc):
                self._record_failure(probe, mark)
            else:
                self._record_success(probe)
            raise
        except BaseException:
            if probe:  # a cancelled probe gives no verdict: the next caller probes
                self._probe_in_flight = False
            raise
        self._record_success(probe)
        return result

    def _admit(self) -> bool:
        """Raise CircuitOpenError unless a call may go; True when this call is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        raise CircuitOpenError(
            f"circuit open after {self._run.length} consecutive failures; "
            f"next attempt in {self.retry_after_seconds:.1f} s"
        )

    def _record_success(self, probe: bool) -> None:
        if not probe and self._opened_at is not None:
            return  # a call admitted before the circuit opened; only the probe decides now
        self._run.succeeded()
        self._opened_at = None
        self._probe_in_flight = False

    def _record_failure(self, probe: bool, mark: int) -> None:
        if not self._run.failed(mark, alone=probe):
            return
        if probe:
            self._probe_in_flight = False
            self._opened_at = self._clock()
        elif self._opened_at is None and self._run.length >= self._threshold:
            self._opened_at = self._clock()


class Stopped(Exception):
    """A retry wait was cut short because the agent is stopping: the row is left as it was."""


class RetryPolicy:
    """How one destination retries: the attempts of one call, the waits between them, the breaker
    every attempt goes through, and the destination's back-off once a call's attempts are spent.

    `stop` cuts every wait short (raising `Stopped`): a stopping agent never sits out a back-off.
    `sleep` replaces the wait in tests (then `stop` is not looked at).
    """

    def __init__(
        self,
        tuning: Tuning,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep | None = None,
        stop: asyncio.Event | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.tuning = tuning
        self.breaker = CircuitBreaker(
            threshold=tuning.breaker_threshold, reset_seconds=tuning.breaker_reset_seconds, clock=clock
        )
        self._sleep = sleep
        self._stop = stop
        self._jitter = jitter

    async def call(self, send: Callable[[], Awaitable[T]]) -> T:
        """`send()` up to `tuning.attempts` times while it fails transiently, through the breaker.

        The first try goes straight through the breaker: a call that succeeds (nearly all of
        them) costs no retrying object. Once a try failed transiently, tenacity takes over with
        that failure as its own first attempt, so the schedule is tenacity's from the start.
        """
        try:
            return await self.breaker.call(send)
        except Exception as exc:
            if self.tuning.attempts <= 1 or not is_retryable(exc):
                raise
            made = [exc]

        async def again() -> T:
            if made:
                raise made.pop()  # the try already made, as tenacity's attempt 1
            return await self.breaker.call(send)

        async for attempt in retrying(self.tuning, sleep=self._wait, jitter=self._jitter):
            with attempt:
                return await again()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def backoff_seconds(self, failures: int, exc: BaseException) -> float:
        """How long the destination waits after its `failures`-th call in a row whose attempts were
        spent (at least 0.5 s); with the breaker open, until it may probe (up to wait_max)."""
        tuning = self.tuning
        delay = capped_delay(
            max(tuning.wait_min_seconds, 0.5), tuning.multiplier, failures, tuning.wait_max_seconds
        )
        if isinstance(exc, CircuitOpenError):
            delay = max(delay, min(tuning.breaker_reset_seconds, tuning.wait_max_seconds))
        return delay

    async def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        if self._stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        if self._stop.is_set():
            raise Stopped("the agent is stopping")
