"""Retry policy (tenacity) and a circuit breaker, both on injected time so tests never wait.

The breaker is our own: pybreaker, aiobreaker, purgatory and circuitbreaker
each lack one of a single-probe half-open state, asyncio support, or an
injectable clock, and all three are needed here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import tenacity

from oneiric_session.destination import Tuning
from oneiric_session.errors import CircuitOpenError, TransientDeliveryError

__all__ = ["BreakerState", "CircuitBreaker", "backoff", "is_retryable", "retrying"]

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


def backoff(tuning: Tuning) -> Callable[[tenacity.RetryCallState], float]:
    """Wait before retry n: min(max, wait_min * multiplier**(n-1) + uniform(0, wait_min)).

    The jitter spreads clients that failed together; the cap bounds the wait.
    (tenacity's wait_exponential_jitter computes the same but renamed its
    arguments across the versions we accept.)
    """

    def wait(state: tenacity.RetryCallState) -> float:
        base = capped_delay(
            tuning.wait_min_seconds, tuning.multiplier, state.attempt_number, tuning.wait_max_seconds
        )
        return min(tuning.wait_max_seconds, base + random.uniform(0, tuning.wait_min_seconds))

    return wait


def retrying(tuning: Tuning, *, sleep: Sleep) -> tenacity.AsyncRetrying:
    """`tuning.attempts` tries, capped exponential back-off with jitter, the last error re-raised as is."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(tuning.attempts),
        wait=backoff(tuning),
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=sleep,
        reraise=True,
    )


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `reset_seconds`.

    Half-open lets exactly one probe through; other calls fail at once while it
    is in flight. The probe's success closes the circuit, its failure opens it
    again for another `reset_seconds`. Only errors `is_failure` accepts count;
    any other outcome (a success, or the server refusing an event) shows the
    server is reachable and counts as a success.
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
        self._failures = 0
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
    def retry_after_seconds(self) -> float:
        """Seconds until a probe may go (0 when calls are let through now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._reset_seconds - self._clock())

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` unless the circuit is open; record its outcome."""
        probe = self._admit()
        try:
            result = await operation()
        except Exception as exc:
            if self._is_failure(exc):
                self._record_failure(probe)
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
            f"circuit open after {self._failures} consecutive failures; "
            f"next attempt in {self.retry_after_seconds:.1f} s"
        )

    def _record_success(self, probe: bool) -> None:
        if not probe and self._opened_at is not None:
            return  # a call admitted before the circuit opened; only the probe decides now
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def _record_failure(self, probe: bool) -> None:
        self._failures += 1
        if probe:
            self._probe_in_flight = False
            self._opened_at = self._clock()
        elif self._opened_at is None and self._failures >= self._threshold:
            self._opened_at = self._clock()
