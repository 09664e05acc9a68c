"""A window of calls in flight meets failures, in-process on a fake clock: the breaker's probe goes
alone, calls failing together count once, a token replaced while calls were on their way, and
the caps never drop a session whose start is on its way to the server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from oneiric_session.agent import DeliveryAgent
from oneiric_session.agent.worker import DestinationWorker
from oneiric_session.common.digest import token_digest
from oneiric_session.errors import AuthenticationError, DeliveryTimeoutError, ServerUnavailableError
from oneiric_session.spool import Spool
from oneiric_session.spool.outbox import Outbox
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.limits import Limits
from tests.support.fake_clock import START, FakeClock, destination_worker


class RoundTrips:
    """A client whose calls really suspend, as over a connection (for `round_trip` seconds, real
    time); `answer` decides each one."""

    server_name: str | None = None

    def __init__(self, answer: Callable[[str, Mapping[str, Any]], Any], round_trip: float = 0.0) -> None:
        self.answer = answer
        self.round_trip = round_trip
        self.calls: list[str] = []

    async def start_session(self, event: Mapping[str, Any]) -> str:
        return await self._call("track_session_start", event)

    async def end_session(self, event: Mapping[str, Any]) -> str:
        return await self._call("track_session_end", event)

    async def _call(self, tool: str, event: Mapping[str, Any]) -> str:
        self.calls.append(tool)
        answer = self.answer(tool, event)
        if asyncio.iscoroutine(answer):
            answer = await answer
        await asyncio.sleep(
            self.round_trip
        )  # sleep-ok: a real round trip (0 unless a test orders calls by it)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    async def aclose(self) -> None:
        pass


class AllInFlight:
    """Holds each call until `count` are in flight, then lets them all go, in the order sent."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self._open = asyncio.Event()

    async def passed(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            asyncio.get_running_loop().call_soon(self._open.set)
        await self._open.wait()


def _spool(tmp_path: Path, clock: FakeClock | None = None) -> Spool:
    extra = {} if clock is None else {"clock": clock}
    return Spool(
        tmp_path / "spool.sqlite3", max_rows=2**62, max_bytes=2**62, max_age_seconds=float("inf"), **extra
    )


def _start(n: int) -> dict[str, Any]:
    return events.build_start_event(
        component_name=f"demo{n}", shell_type="WindowShell", metadata=None, limits=Limits()
    )


def _append_starts(spool: Spool, destination: Destination, count: int) -> None:
    for n in range(count):
        spool.append_start(f"local-{n}", destination, _start(n), pid=None, pid_start_time=None, boot_id=None)


async def _one_drain(
    tmp_path: Path,
    clock: FakeClock,
    answer: Callable[[str, Mapping[str, Any]], Any],
    tuning: Tuning,
    *,
    starts: int,
) -> DestinationWorker:
    """A worker for `starts` spooled starts, after one drain against a server answering `answer`."""
    destination = Destination(command="session-buddy-test", tuning=tuning)
    spool = _spool(tmp_path, clock)
    _append_starts(spool, destination, starts)
    worker = destination_worker(spool, destination, clock, RoundTrips(answer))
    await worker.drain(replaying=False, stopping=lambda: False)
    return worker


async def _drain_as_the_agent_would(worker: DestinationWorker, clock: FakeClock, spool: Spool) -> None:
    """Drain at each back-off's end, for at most an hour of fake time, until the spool is empty."""
    while spool.stats().depth and clock.now - START < 3600.0:
        await worker.drain(replaying=False, stopping=lambda: False)
        clock.now = max(clock.now, worker.retry_at)
        spool.make_due(worker.deferred, clock.now)
        worker.deferred.clear()


async def test_with_a_window_the_breakers_probe_goes_alone_and_closes_it(tmp_path: Path) -> None:
    """agent.window = 4, the server down long enough to open the breaker, then back. A second call
    beside the probe found the circuit open and its back-off cancelled the probe, every time: the
    destination never delivered again."""
    clock = FakeClock()
    up_at = START + 10.0

    def answer(tool: str, event: Mapping[str, Any]) -> Any:
        if clock.now < up_at:
            return ServerUnavailableError("connection refused")
        return f"srv-{event['event_id']}"

    destination = Destination(command="session-buddy-test", tuning=Tuning(window=4))
    spool = _spool(tmp_path, clock)
    _append_starts(spool, destination, 8)
    # The probe's round trip takes longer than a call refused at once by the open circuit.
    worker = destination_worker(spool, destination, clock, RoundTrips(answer, round_trip=0.01))
    await _drain_as_the_agent_would(worker, clock, spool)
    assert worker.policy.breaker.state == "closed"
    assert spool.stats().depth == 0
    assert clock.now - up_at < 120.0  # within a breaker reset (60 s) and a back-off of it coming back


async def test_a_window_failing_together_counts_one_failure_towards_the_back_off(tmp_path: Path) -> None:
    """One dropped connection fails the 16 calls in flight at once: the destination waits its first
    back-off (0.5 s), as after one failed call, not the one of 16 failures in a row (wait_max)."""
    clock = FakeClock()
    gate = AllInFlight(16)

    async def drop_all(tool: str, event: Mapping[str, Any]) -> Exception:
        await gate.passed()
        return ServerUnavailableError("the server closed the connection")

    worker = await _one_drain(tmp_path, clock, drop_all, Tuning(attempts=1, window=16), starts=20)
    assert gate.arrived == 16
    assert worker.failures == 1
    assert worker.policy.breaker.state == "closed"
    assert worker.retry_at == START + 0.5


def _token_race_agent(
    spool: Spool, destination: Destination, *, new_token: str, in_flight: int
) -> tuple[DeliveryAgent, RoundTrips]:
    """An agent holding "T1" whose first `in_flight` calls go out with it; a shell brings
    `new_token` while they are on their way; the server accepts only "T2" (its refusals carry the
    digest of the token refused, as `transport.answers` makes them)."""
    sent: list[str | None] = []
    release = asyncio.Event()
    box: list[DeliveryAgent] = []
    token: Callable[[], str | None] = lambda: None  # noqa: E731 (set by the factory)

    async def answer(tool: str, event: Mapping[str, Any]) -> Any:
        mine = token()
        sent.append(mine)
        if len(sent) == in_flight:
            box[0].update_tokens({destination.key: new_token})
            release.set()
        if len(sent) <= in_flight:
            await release.wait()
        if mine != "T2":
            return AuthenticationError(
                f"{tool}: the server refused the token", token_digest=token_digest(mine)
            )
        return f"srv-{event['event_id']}" if tool == "track_session_start" else "ended"

    client = RoundTrips(answer)

    def factory(_destination: Destination, read_token: Callable[[], str | None]) -> RoundTrips:
        nonlocal token
        token = read_token
        return client

    agent = DeliveryAgent(spool, tokens={destination.key: "T1"}, client_factory=factory)
    box.append(agent)
    return agent, client


async def test_a_refusal_of_a_token_replaced_meanwhile_sends_the_rows_again(tmp_path: Path) -> None:
    """Calls sent with T1 are on their way when a shell brings T2 (no dead letter to requeue yet);
    T1's refusals then come back. They used to refuse T2 and keep the rows as dead letters for good
    (the same T2 brought again was ignored): now the rows go again, with T2."""
    destination = Destination(command="session-buddy-test", tuning=Tuning(window=4))
    spool = _spool(tmp_path)
    _append_starts(spool, destination, 3)
    agent, _client = _token_race_agent(spool, destination, new_token="T2", in_flight=3)
    result = await agent.replay()
    assert (result.delivered, result.dead_lettered, spool.stats().dead) == (3, 0, 0)


async def test_an_old_shells_refused_token_never_displaces_the_new_one(tmp_path: Path) -> None:
    """After that race, a shell still holding the expired T1 wakes the agent: T1 was refused, so it
    is not taken back, and the sessions that follow go with T2."""
    destination = Destination(command="session-buddy-test", tuning=Tuning(window=4))
    spool = _spool(tmp_path)
    _append_starts(spool, destination, 2)
    agent, _client = _token_race_agent(spool, destination, new_token="T2", in_flight=2)
    await agent.replay()
    assert agent.update_tokens({destination.key: "T1"}) == 0  # an old shell
    for n in range(10, 13):
        spool.append_start(f"local-{n}", destination, _start(n), pid=None, pid_start_time=None, boot_id=None)
    before = agent.delivered
    await agent.replay()
    assert agent.delivered - before == 3
    assert spool.stats().dead == 0


async def test_a_cap_spares_the_sessions_whose_start_is_on_its_way(tmp_path: Path) -> None:
    """A shell whose caps are full writes a start while the agent's calls for the oldest starts are
    in flight (the server has recorded them). Taken in, its caps dropped the oldest session, the one
    fetched to be sent (the server may have recorded it): the answer then mapped nothing, and the
    shell's end of it was refused as no_start, leaving the session open at the server for ever."""
    destination = Destination(command="session-buddy-test", tuning=Tuning(window=4))
    spool = _spool(tmp_path)
    _append_starts(spool, destination, 4)
    box: list[DeliveryAgent] = []
    shell = Outbox(spool.path, caps=(4, 2**40, 86400.0))

    def answer(tool: str, event: Mapping[str, Any]) -> str:
        if event["component_name"] == "demo0":  # meanwhile a shell (a cap of 4 rows) starts a session
            assert shell.append_start(
                "local-late", destination, _start(9), pid=None, pid_start_time=None, boot_id=None
            )
            box[0].take_in()  # as the agent's loop does, beside its deliveries
        return f"srv-{event['component_name']}"

    agent = DeliveryAgent(spool, client_factory=lambda _d, _t: RoundTrips(answer))
    box.append(agent)
    await agent.replay()
    for n in range(4):  # each shell ends: its start is known, its end kept
        end = events.build_end_event(
            session_id=f"local-{n}",
            exit_reason="user_exit",
            duration_seconds=1.0,
            metadata=None,
            limits=Limits(),
        )
        assert spool.append_end(f"local-{n}", destination, end), f"the end of demo{n} was refused"
    # The cap took the one session the server cannot know yet: the late one.
    assert spool.stats().dropped_sessions == {"max_rows": 1}
    assert agent.delivered == 4


async def test_a_failure_after_a_success_counts_again(tmp_path: Path) -> None:
    """Three calls in flight answer at once: demo0 fails, demo1 succeeds, demo2 fails. demo2 was
    skipped as failing "together" with demo0, so the destination backed off with no failure
    counted (status said 0 consecutive failures beside its last error; the breaker counted 0)."""
    clock = FakeClock()
    gate = AllInFlight(3)

    async def answer(tool: str, event: Mapping[str, Any]) -> Any:
        await gate.passed()
        if event["component_name"] == "demo1":
            return "srv-1"
        return ServerUnavailableError("the server closed the connection")

    worker = await _one_drain(tmp_path, clock, answer, Tuning(attempts=1, window=3), starts=3)
    assert worker.last_error is not None and worker.retry_at > START
    assert worker.failures == 1 and worker.policy.breaker.failures == 1


def _password_rotation(
    tmp_path: Path, holding: str
) -> tuple[DeliveryAgent, Callable[[], Any], list[str], Any]:
    """An agent whose server takes only the password in `accepted[0]`; it holds `holding`'s."""
    accepted = ["old"]
    built: list[str] = []

    def answer(tool: str, event: Mapping[str, Any]) -> Any:
        if f":{accepted[0]}@" not in built[-1]:
            return ServerUnavailableError("Server returned an error response")  # what a 401 gives
        return f"srv-{event['component_name']}"

    def client(destination: Destination, _token: Any) -> RoundTrips:
        built.append(destination.url or "")
        return RoundTrips(answer)

    shell = Destination(
        transport="http", url=f"http://fleet:{holding}@127.0.0.1:1/mcp", tuning=Tuning(attempts=1)
    )
    agent = DeliveryAgent(_spool(tmp_path), secrets={shell.key: shell.secrets()}, client_factory=client)
    workers = agent._destinations  # driven as serve() drives them, its client kept between looks

    async def look() -> None:
        for worker in workers.workers.values():
            worker.retry_at = 0.0  # (each back-off passed)
        workers.schedule(replaying=True)
        await asyncio.gather(*workers.tasks())

    return agent, look, built, accepted


def _url_with(password: str) -> Destination:
    return Destination(
        transport="http", url=f"http://fleet:{password}@127.0.0.1:1/mcp", tuning=Tuning(attempts=1)
    )


async def test_a_rotated_url_password_reaches_the_server(tmp_path: Path) -> None:
    """A new password is not a new destination (it is a secret: not part of the key). The worker kept
    the client it made with the old one, and the destination failed until the agent restarted."""
    agent, look, built, accepted = _password_rotation(tmp_path, "old")
    agent.spool.append_start(
        "local-0", _url_with("old"), _start(0), pid=None, pid_start_time=None, boot_id=None
    )
    await look()
    accepted[0] = "new"  # rotated at the server; the next shell brings the new one
    agent.update_secrets({_url_with("new").key: _url_with("new").secrets()})
    agent.spool.append_start(
        "local-1", _url_with("new"), _start(1), pid=None, pid_start_time=None, boot_id=None
    )
    await look()  # the old connection fails
    await look()  # failing, with other secrets in memory: it connects with those
    assert agent.delivered == 2
    assert built == [_url_with("old").url, _url_with("new").url]


async def test_a_shell_still_holding_the_old_password_leaves_a_working_connection(tmp_path: Path) -> None:
    """A shell started before the rotation brings the old password as it leaves: the working
    connection was torn down and made anew with it, and delivery failed until a newer shell came."""
    agent, look, built, accepted = _password_rotation(tmp_path, "new")
    accepted[0] = "new"
    agent.spool.append_start(
        "local-0", _url_with("new"), _start(0), pid=None, pid_start_time=None, boot_id=None
    )
    await look()
    agent.update_secrets({_url_with("old").key: _url_with("old").secrets()})
    agent.spool.append_start(
        "local-1", _url_with("new"), _start(1), pid=None, pid_start_time=None, boot_id=None
    )
    await look()
    assert agent.delivered == 2
    assert built == [_url_with("new").url]


async def test_a_cap_spares_a_session_whose_start_went_unanswered(tmp_path: Path) -> None:
    """A start whose call timed out may be recorded at the server. Its session was spared only while
    the drain lasted: once the destination backed off, a shell's full caps dropped it, and its end
    was refused as no_start (the session open at the server for ever)."""
    destination = Destination(command="session-buddy-test", tuning=Tuning(attempts=1, window=1))
    spool = _spool(tmp_path)
    _append_starts(spool, destination, 4)

    def answer(tool: str, event: Mapping[str, Any]) -> Any:
        if event["component_name"] == "demo0":
            return DeliveryTimeoutError("track_session_start: no answer within 30 s")
        return f"srv-{event['component_name']}"

    agent = DeliveryAgent(spool, client_factory=lambda _d, _t: RoundTrips(answer))
    assert (await agent.replay()).delivered == 0  # the first call failed: it backs off
    shell = Outbox(spool.path, caps=(4, 2**40, 86400.0))
    assert shell.append_start(
        "local-late", destination, _start(9), pid=None, pid_start_time=None, boot_id=None
    )
    agent.take_in()
    end = events.build_end_event(
        session_id="local-0", exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )
    assert spool.append_end("local-0", destination, end), "the session of the unanswered start was dropped"
    assert spool.stats().dropped_sessions == {"max_rows": 1}  # another one went (never sent)


async def test_a_failure_after_an_old_shell_brought_the_old_password_comes_back_to_the_new(
    tmp_path: Path,
) -> None:
    """The working connection (new password) is kept when an old shell brings the old one; but
    when the server then restarts, the next connection was made with the old one, for good."""
    agent, look, built, accepted = _password_rotation(tmp_path, "new")
    accepted[0] = "new"
    agent.spool.append_start(
        "local-0", _url_with("new"), _start(0), pid=None, pid_start_time=None, boot_id=None
    )
    await look()
    agent.update_secrets({_url_with("old").key: _url_with("old").secrets()})  # an old shell leaves
    accepted[0] = "down"  # the server restarts
    agent.spool.append_start(
        "local-1", _url_with("new"), _start(1), pid=None, pid_start_time=None, boot_id=None
    )
    await look()
    accepted[0] = "new"
    for _ in range(3):
        await look()
    assert agent.delivered == 2, built
    assert built[-1] == _url_with("new").url
