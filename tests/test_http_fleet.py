"""Streamable HTTP for fleets: many hosts' agents, one server, restarts and outages, the same guarantees."""

from __future__ import annotations

import collections
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session import wakeup
from oneiric_session.agent.resilience import RetryPolicy
from oneiric_session.agent.status import delivery_status
from oneiric_session.config.loader import load_config
from oneiric_session.errors import CircuitOpenError, DeliveryTimeoutError
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.events import build_end_event, build_start_event
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport import SessionBuddyClient
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.faults import FAULT_SERVER
from tests.support.faults import isolated_env as fault_env
from tests.support.http_server import HttpServer, free_port

HOSTS, SHELLS_PER_HOST, SESSIONS_PER_SHELL = 4, 2, 3
LIMITS = Limits()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    server = HttpServer(tmp_path)
    yield server
    server.kill()


class Fleet:
    """Hosts reporting to one server: each its own HOME, XDG dirs, spool and agent (stopped at teardown)."""

    def __init__(self, root: Path, server: HttpServer) -> None:
        self.root, self.server = root, server
        self.hosts: list[Scene] = []

    def host(self, name: str, **settings: str) -> Scene:
        (self.root / name).mkdir()
        scene = Scene(self.root / name, transport="http", url=self.server.url, **settings)
        self.hosts.append(scene)
        return scene


@pytest.fixture
def fleet(tmp_path: Path, server: HttpServer) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, server)
    yield fleet
    for scene in fleet.hosts:
        scene.stop_agents()


def start_event(component: str = "web") -> dict[str, object]:
    return build_start_event(
        component_name=component, shell_type="T", metadata=None, limits=LIMITS, report_cwd="/tmp"
    )


def end_event(session_id: str) -> dict[str, object]:
    return build_end_event(
        session_id=session_id, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=LIMITS
    )


def test_several_hosts_report_to_one_http_server_each_session_exactly_once(
    fleet: Fleet, server: HttpServer
) -> None:
    """Four hosts (separate spools and agents), two shells each, all at once: 24 sessions, once each."""
    server.start()
    hosts = [fleet.host(f"h{n}") for n in range(HOSTS)]
    shells = [
        scene.shell(SESSIONS_PER_SHELL, component=f"host{n}")
        for n, scene in enumerate(hosts)
        for _ in range(SHELLS_PER_HOST)
    ]
    for shell in shells:
        out, err = shell.communicate(timeout=WAIT_SECONDS)
        assert shell.returncode == 0, err
        assert "Traceback" not in err and out.split("\n")[1] == "False"  # the shell never imported mcp
    total = HOSTS * SHELLS_PER_HOST * SESSIONS_PER_SHELL

    def all_ended() -> bool:
        rows = server.rows()
        return len(rows) >= total and all(r["status"] == "ended" for r in rows)

    wait_until(all_ended, what="every session to be recorded and ended")
    for scene in hosts:
        wait_until(lambda s=scene: s.depth() == 0, what="each host's spool to drain")

    rows = server.rows()
    assert len(rows) == total
    assert len({row["event_id"] for row in rows}) == total
    per_host = SHELLS_PER_HOST * SESSIONS_PER_SHELL
    assert collections.Counter(r["component_name"] for r in rows) == {
        f"host{n}": per_host for n in range(HOSTS)
    }
    assert all(r["exit_reason"] == "user_exit" for r in rows)
    # report_cwd on http: a directory the server's host has; the shell's real cwd rides in metadata.
    for row in rows:
        scene = hosts[int(row["component_name"].removeprefix("host"))]
        assert row["environment"]["cwd"] == "/tmp"
        assert row["start_metadata"]["shell_cwd"] == str(scene.root)
    # Each host had its own agent, and none of them had to report a failure.
    for scene in hosts:
        assert scene.dead() == 0
        log = wakeup.agent_log_path(scene.spool_path).read_text()
        assert "serving" in log and "WARNING" not in log, log


def test_a_restarted_http_server_is_reached_again_without_a_failure(fleet: Fleet, server: HttpServer) -> None:
    """kill -9 the server mid-session, restart it on the same port and database: the end gets there,
    from the same agent, with nothing reported as failing (the forgotten MCP session is re-opened)."""
    server.start()
    scene = fleet.host("h", agent__idle_exit_seconds="60")  # keeps its connection warm
    holder = scene.shell(1, hold=True)
    assert holder.stdout is not None and holder.stdin is not None
    holder.stdout.readline()
    wait_until(lambda: [r for r in server.rows() if r["status"] == "open"], what="the start")

    def acknowledged() -> bool:  # the answer reached the agent, not only the server's database
        with scene.spool() as spool:
            return any(s.server_session_id for s in spool.open_sessions())

    wait_until(acknowledged, what="the start's answer acknowledged by the agent")
    agent_pid = scene.agent_pid()

    server.kill()
    server.start()
    holder.stdin.close()
    assert holder.wait(timeout=WAIT_SECONDS) == 0
    wait_until(lambda: scene.depth() == 0, what="the end to be delivered")
    (row,) = server.rows()
    assert (row["status"], row["exit_reason"]) == ("ended", "user_exit")
    assert scene.agent_pid() == agent_pid
    assert scene.dead() == 0
    key = load_config(environ=scene.env).destination().key
    status = delivery_status(scene.spool_path, destination_key=key)
    assert (status["last_error"], status["breaker"]) == (None, "closed")
    log = wakeup.agent_log_path(scene.spool_path).read_text()
    assert "WARNING" not in log, log


def test_an_agent_killed_after_the_answer_over_http_duplicates_nothing(
    fleet: Fleet, server: HttpServer
) -> None:
    """SIGKILL between the server's answer and the spool's acknowledgement: the next agent resends the
    start, and the server's idempotency on event_id keeps it one session (as on stdio)."""
    server.start()
    scene = fleet.host("h")
    log = wakeup.agent_log_path(scene.spool_path)
    agent = scene.start_agent(kill_after="start")
    scene.run_shell(1)
    assert agent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    assert scene.depth() == 2  # the answered start is still spooled

    scene.agent("--log-file", str(log))
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    (row,) = server.rows()
    assert (row["status"], row["exit_reason"]) == ("ended", "user_exit")


async def test_the_client_reopens_a_session_the_server_forgot(server: HttpServer) -> None:
    """A session id the restarted server does not know costs no retry and no breaker failure."""
    server.start()
    destination = Destination(
        transport="http", url=server.url, tuning=Tuning(attempts=1, breaker_threshold=1, connect_seconds=10)
    )
    policy = RetryPolicy(destination.tuning)
    async with SessionBuddyClient(destination) as client:
        session_id = await policy.call(lambda: client.start_session(start_event()))
        server.kill()
        server.start()
        assert await policy.call(lambda: client.end_session(end_event(session_id))) == "ended"
        assert policy.breaker.state == "closed"
        second = await policy.call(lambda: client.start_session(start_event("api")))
    assert [(r["session_id"], r["status"]) for r in server.rows()] == [
        (session_id, "ended"),
        (second, "open"),
    ]


def test_events_wait_while_the_http_server_is_down_then_arrive(fleet: Fleet, server: HttpServer) -> None:
    """Nothing listens at the url: retries back off, the breaker opens, the spool keeps the events;
    once the server is up they are delivered once each and the breaker closes."""
    scene = fleet.host("h", breaker__threshold="2", breaker__reset_seconds="0.5")
    key = load_config(environ=scene.env).destination().key
    scene.run_shell(2)

    def breaker_open() -> dict[str, object] | None:
        status = delivery_status(scene.spool_path, destination_key=key)
        return status if status["breaker"] == "open" else None

    status = wait_until(breaker_open, what="the breaker to open")
    assert status["depth"] == 4 and status["dead_letters"] == 0
    assert re.search(r"All connection attempts failed|circuit open", str(status["last_error"]))
    log = wakeup.agent_log_path(scene.spool_path).read_text()
    assert f"cannot deliver to http {server.url} (will retry)" in log, log

    server.start()
    wait_until(lambda: scene.depth() == 0, what="the waiting events to be delivered")
    rows = server.rows()
    assert len(rows) == 2 and all(r["status"] == "ended" for r in rows)
    status = delivery_status(scene.spool_path, destination_key=key)
    assert (status["breaker"], status["last_error"], status["dead_letters"]) == ("closed", None, 0)


def _fault_http(tmp_path: Path, modes: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**fault_env(tmp_path), "FAULT_MODE": modes, "FAULT_RECORD": str(tmp_path / "record.jsonl")}
    env["PATH"] = "/usr/bin:/bin"
    process = subprocess.Popen(
        [sys.executable, FAULT_SERVER, "--http", f"127.0.0.1:{port}"], env=env, stderr=subprocess.DEVNULL
    )

    def listening() -> bool:
        assert process.poll() is None
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_until(listening, what="the fault server to listen")
    return process, f"http://127.0.0.1:{port}/mcp"


TIMING = Tuning(
    attempts=2,
    wait_min_seconds=0.0,
    wait_max_seconds=0.0,
    breaker_threshold=2,
    breaker_reset_seconds=3600,
    connect_seconds=0.5,
    call_seconds=0.5,
)


async def _times_out_twice_then_breaker_opens(url: str, match: str, tuning: Tuning = TIMING) -> None:
    policy = RetryPolicy(tuning)
    async with SessionBuddyClient(Destination(transport="http", url=url, tuning=tuning)) as client:
        started = time.monotonic()
        with pytest.raises(DeliveryTimeoutError, match=match):
            await policy.call(lambda: client.start_session(start_event()))
        assert 1.0 <= time.monotonic() - started < 10.0  # two attempts of 0.5 s each, then given up
        assert policy.breaker.state == "open"
        started = time.monotonic()
        with pytest.raises(CircuitOpenError):
            await policy.call(lambda: client.start_session(start_event()))
        assert time.monotonic() - started < 0.5


async def test_http_connect_timeout_retries_and_breaker() -> None:
    """A socket that accepts TCP and never speaks HTTP: each attempt ends at connect_seconds."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        await _times_out_twice_then_breaker_opens(
            f"http://127.0.0.1:{silent.getsockname()[1]}/mcp", "no MCP handshake within 0.5 s"
        )


async def test_http_call_timeout_retries_and_breaker(tmp_path: Path) -> None:
    """A server that takes the call and never answers: each attempt ends at call_seconds."""
    process, url = _fault_http(tmp_path, "hang_call")
    try:
        # The handshake gets time to spare (it once took over 0.5 s on a loaded CI machine);
        # only the call is meant to time out here.
        tuning = TIMING._replace(connect_seconds=5.0)
        await _times_out_twice_then_breaker_opens(url, "no answer within 0.5 s", tuning)
    finally:
        process.terminate()
        process.wait(WAIT_SECONDS)
    assert (tmp_path / "record.jsonl").read_text().count("track_session_start") == 2
