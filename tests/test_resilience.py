"""Circuit breaker states on a fake clock, and the retry policy with a recording no-op sleep."""

from __future__ import annotations

import asyncio

import pytest

from oneiric_session.agent.resilience import (
    CircuitBreaker,
    FailureRun,
    backoff,
    capped_delay,
    is_retryable,
    retrying,
)
from oneiric_session.errors import (
    CircuitOpenError,
    DeliveryTimeoutError,
    RejectedError,
    ServerUnavailableError,
)
from oneiric_session.tracking.destination import Tuning


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise ServerUnavailableError("down")


def breaker(clock: FakeClock, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(threshold=threshold, reset_seconds=60.0, clock=clock)


async def test_opens_after_threshold_consecutive_failures_and_then_fails_at_once() -> None:
    clock = FakeClock()
    cb = breaker(clock)
    for _ in range(2):
        with pytest.raises(ServerUnavailableError):
            await cb.call(down)
    assert cb.state == "closed"
    await cb.call(ok)  # a success resets the count
    for _ in range(3):
        with pytest.raises(ServerUnavailableError):
            await cb.call(down)
    assert cb.state == "open"
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(CircuitOpenError, match=r"next attempt in 60\.0 s"):
        await cb.call(counted)
    assert calls == 0
    clock.now += 59.9
    assert cb.state == "open"


async def test_half_open_lets_exactly_one_probe_through() -> None:
    """While the probe is in flight every other call fails at once; its success closes the circuit."""
    clock = FakeClock()
    cb = breaker(clock, threshold=1)
    with pytest.raises(ServerUnavailableError):
        await cb.call(down)
    clock.now += 60.0
    assert cb.state == "half_open"
    release = asyncio.Event()

    async def slow_probe() -> str:
        await release.wait()
        return "probed"

    probe = asyncio.create_task(cb.call(slow_probe))
    await asyncio.sleep(0)
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await cb.call(ok)
    release.set()
    assert await probe == "probed"
    assert cb.state == "closed"
    assert await cb.call(ok) == "ok"


async def test_failed_probe_opens_again_for_a_full_reset_period() -> None:
    clock = FakeClock()
    cb = breaker(clock, threshold=2)
    for _ in range(2):
        with pytest.raises(ServerUnavailableError):
            await cb.call(down)
    clock.now += 60.0
    with pytest.raises(ServerUnavailableError):
        await cb.call(down)
    assert cb.state == "open"
    assert cb.retry_after_seconds == 60.0
    clock.now += 60.0
    assert cb.state == "half_open"


async def test_cancelled_probe_leaves_half_open_for_the_next_caller() -> None:
    clock = FakeClock()
    cb = breaker(clock, threshold=1)
    with pytest.raises(ServerUnavailableError):
        await cb.call(down)
    clock.now += 60.0
    probe = asyncio.create_task(cb.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await cb.call(ok) == "ok"
    assert cb.state == "closed"


async def test_a_refusal_counts_as_a_reachable_server() -> None:
    """RejectedError is the server answering: it neither opens the breaker nor fails a probe."""
    clock = FakeClock()
    cb = breaker(clock, threshold=1)

    async def refused() -> str:
        raise RejectedError("bad event")

    for _ in range(3):
        with pytest.raises(RejectedError):
            await cb.call(refused)
    assert cb.state == "closed"


def test_only_transient_errors_are_retryable() -> None:
    assert is_retryable(ServerUnavailableError("x")) and is_retryable(DeliveryTimeoutError("x"))
    assert not is_retryable(CircuitOpenError("x"))
    assert not is_retryable(RejectedError("x"))
    assert not is_retryable(ValueError("x"))


@pytest.mark.parametrize(
    ("error", "attempts_made"),
    [
        (ServerUnavailableError("down"), 4),
        (DeliveryTimeoutError("slow"), 4),
        (RejectedError("bad"), 1),
        (CircuitOpenError("open"), 1),
    ],
)
async def test_retry_counts_and_reraises_the_last_error(error: Exception, attempts_made: int) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    tries = 0
    tuning = Tuning(attempts=4, wait_min_seconds=0.5, wait_max_seconds=30.0, multiplier=2.0)
    with pytest.raises(type(error)) as caught:
        async for attempt in retrying(tuning, sleep=record):
            with attempt:
                tries += 1
                raise error
    assert caught.value is error
    assert tries == attempts_made
    assert len(waits) == attempts_made - 1


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    tuning = Tuning(wait_min_seconds=1.0, wait_max_seconds=10.0, multiplier=3.0)
    wait = backoff(tuning)

    class State:
        def __init__(self, attempt_number: int) -> None:
            self.attempt_number = attempt_number

    for _ in range(50):
        first, second, third, late = (wait(State(n)) for n in (1, 2, 3, 5000))  # type: ignore[arg-type]
        assert 1.0 <= first <= 2.0
        assert 3.0 <= second <= 4.0
        assert 9.0 <= third <= 10.0
        assert late == 10.0  # past float range: the cap, not an OverflowError


def test_capped_delay_never_overflows() -> None:
    """The agent's back-off after a long outage (1024+ failures) is the cap, not an OverflowError."""
    assert capped_delay(0.5, 2.0, 1, 30.0) == 0.5
    assert capped_delay(0.5, 2.0, 4, 30.0) == 4.0
    assert capped_delay(0.5, 2.0, 1100, 30.0) == 30.0
    assert capped_delay(0.5, 10.0, 10**6, 30.0) == 30.0


async def test_calls_in_flight_that_fail_together_count_once() -> None:
    """One dropped connection fails a whole window of calls at once: one failure, not sixteen (the
    breaker, threshold 3, stays closed); a call sent after that failure counts again."""
    clock = FakeClock()
    cb = breaker(clock)
    dropped = asyncio.Event()

    async def in_flight() -> str:
        await dropped.wait()
        raise ServerUnavailableError("the server closed the connection")

    window = [asyncio.create_task(cb.call(in_flight)) for _ in range(16)]
    await asyncio.sleep(0)  # all sixteen let through
    dropped.set()
    results = await asyncio.gather(*window, return_exceptions=True)
    assert all(isinstance(r, ServerUnavailableError) for r in results)
    assert cb.state == "closed"
    for _ in range(2):
        with pytest.raises(ServerUnavailableError):
            await cb.call(down)
    assert cb.state == "open"  # 1 + 2 consecutive failures


def test_a_failure_run_counts_calls_failing_together_once() -> None:
    """The one counter of consecutive failures (the breaker's tries, the worker's calls): calls
    marked before a failure was counted fail with it; a later call, a lone one or a success
    after them starts counting again."""
    run = FailureRun()
    wave = [run.mark() for _ in range(3)]  # a window of three calls in flight
    assert [run.failed(mark) for mark in wave] == [True, False, False]
    assert run.length == 1
    assert run.failed(run.mark())  # the next call, sent after that failure: a failure of its own
    assert run.length == 2
    stale = run.mark()
    assert run.failed(run.mark())
    assert run.failed(stale, alone=True)  # a probe counts whatever failed since it was sent
    assert run.length == 4
    run.succeeded()
    assert run.length == 0
    late = wave[0]  # a call sent long before, failing after the success: the run starts again
    assert run.failed(late) and run.length == 1
