"""SessionBuddyClient over real stdio against the fault server (a real subprocess per test)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oneiric_session.agent.resilience import RetryPolicy
from oneiric_session.errors import (
    AuthenticationError,
    CircuitOpenError,
    DeliveryTimeoutError,
    RejectedError,
    ServerUnavailableError,
)
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.events import build_end_event, build_start_event
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport import SessionBuddyClient
from tests.support.faults import (
    fault_destination,
    open_fds,
    process_alive,
    records,
    server_pids,
    tool_calls,
    wait_dead,
)

TOKEN = "tok-3f9a-very-secret"


def start_event(name: str = "demo") -> dict:
    return build_start_event(
        component_name=name, shell_type="TestShell", metadata={"k": "v"}, limits=Limits()
    )


def end_event(session_id: str) -> dict:
    return build_end_event(
        session_id=session_id, exit_reason="user_exit", duration_seconds=1.5, metadata=None, limits=Limits()
    )


async def no_sleep(_seconds: float) -> None:
    return None


@pytest.mark.parametrize("modes", ["", "json_text", "log_lines,garbage", "reject_discover"])
async def test_round_trip_in_each_success_shape(tmp_path: Path, modes: str) -> None:
    """Start then end over one session, whatever shape the success arrives in, through stdout noise."""
    async with SessionBuddyClient(fault_destination(tmp_path, modes)) as client:
        session_id = await client.start_session(start_event())
        assert session_id.startswith("demo-")
        assert await client.end_session(end_event(session_id)) == "ended"
    methods = [r["method"] for r in records(tmp_path) if "method" in r]
    assert methods[0] == "initialize" and "server/discover" not in methods
    assert [r["tool"] for r in tool_calls(tmp_path)] == ["track_session_start", "track_session_end"]
    assert len(server_pids(tmp_path)) == 1  # one persistent session for both calls


async def test_bare_session_id_and_not_found(tmp_path: Path) -> None:
    """An older server's bare-id text is a session id; an end may answer not_found."""
    async with SessionBuddyClient(fault_destination(tmp_path, "bare_id,not_found")) as client:
        session_id = await client.start_session(start_event("bare"))
        assert session_id.startswith("bare-")
        assert await client.end_session(end_event(session_id)) == "not_found"


async def test_token_is_an_argument_only_when_present(tmp_path: Path) -> None:
    """The token is read at send time and sent as `token`; no token, no argument."""
    tokens = iter([None, TOKEN])
    async with SessionBuddyClient(fault_destination(tmp_path), token=lambda: next(tokens)) as client:
        await client.start_session(start_event())
        await client.start_session(start_event())
    first, second = (call["arguments"] for call in tool_calls(tmp_path))
    assert "token" not in first
    assert second["token"] == TOKEN


@pytest.mark.parametrize("modes", ["auth_emoji", "auth_plain", "auth_wrapped"])
async def test_authentication_failure_is_permanent_and_never_retried(tmp_path: Path, modes: str) -> None:
    """Each real form of 'Authentication failed' is an AuthenticationError, sent once, token not shown."""
    destination = fault_destination(tmp_path, modes, attempts=3)
    policy = RetryPolicy(destination.tuning, sleep=no_sleep)
    async with SessionBuddyClient(destination, token=lambda: TOKEN) as client:
        with pytest.raises(AuthenticationError) as caught:
            await policy.call(lambda: client.start_session(start_event()))
    assert TOKEN not in str(caught.value)
    assert len(tool_calls(tmp_path)) == 1


@pytest.mark.parametrize(
    ("modes", "words"), [("status_error", "Path does not exist"), ("validation_error", "1 validation error")]
)
async def test_refusal_is_not_retried(tmp_path: Path, modes: str, words: str) -> None:
    """status "error" and isError validation text are RejectedError after exactly one server call."""
    destination = fault_destination(tmp_path, modes, attempts=3)
    policy = RetryPolicy(destination.tuning, sleep=no_sleep)
    async with SessionBuddyClient(destination) as client:
        with pytest.raises(RejectedError, match=words) as caught:
            await policy.call(lambda: client.start_session(start_event()))
        assert policy.breaker.state == "closed"  # a refusal proves the server is up
    assert not isinstance(caught.value, AuthenticationError)
    assert len(tool_calls(tmp_path)) == 1


async def test_missing_server_command_fails_fast(tmp_path: Path) -> None:
    """A command that does not exist is ServerUnavailableError naming it, without a launch."""
    destination = Destination(command=str(tmp_path / "no-such-server"), tuning=Tuning(attempts=1))
    async with SessionBuddyClient(destination) as client:
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="server command not found"):
            await client.start_session(start_event())
    assert time.monotonic() - started < 1.0


async def test_server_that_refuses_to_start_is_retried_then_reported(tmp_path: Path) -> None:
    """Exit at start-up is transient: retried the configured times, the stderr tail in the reason."""
    destination = fault_destination(tmp_path, "refuse_start", attempts=2)
    waits: list[float] = []

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(destination.tuning, sleep=record_sleep)
    async with SessionBuddyClient(destination) as client:
        with pytest.raises(ServerUnavailableError, match="refusing to start"):
            await policy.call(lambda: client.start_session(start_event()))
    assert len(server_pids(tmp_path)) == 2
    assert len(waits) == 1


async def test_hang_on_initialize_times_out_and_kills_the_server(tmp_path: Path) -> None:
    """No handshake within connect_seconds: DeliveryTimeoutError, and the server's process is gone."""
    destination = fault_destination(tmp_path, "hang_initialize", connect_seconds=3.0)
    async with SessionBuddyClient(destination) as client:
        started = time.monotonic()
        with pytest.raises(DeliveryTimeoutError, match="handshake"):
            await client.start_session(start_event())
        assert time.monotonic() - started < 4.5  # the timeout, then an immediate kill (no grace)
    assert [r["method"] for r in records(tmp_path) if "method" in r] == ["initialize"]
    (pid,) = server_pids(tmp_path)
    assert wait_dead(pid, 5.0)


async def test_hang_on_call_times_out_then_reconnects(tmp_path: Path) -> None:
    """A call past call_seconds times out; the hung server is killed; the retry gets a new one."""
    destination = fault_destination(tmp_path, "hang_call", call_seconds=0.5, attempts=2)
    policy = RetryPolicy(destination.tuning, sleep=no_sleep)
    async with SessionBuddyClient(destination) as client:
        with pytest.raises(DeliveryTimeoutError, match=r"no answer within 0\.5 s"):
            await policy.call(lambda: client.start_session(start_event()))
    pids = server_pids(tmp_path)
    assert len(pids) == 2
    assert all(wait_dead(pid, 5.0) for pid in pids)


async def test_crash_mid_session_reconnects_on_the_next_attempt(tmp_path: Path) -> None:
    """The server exits instead of answering; the retry starts a new server and is answered."""
    destination = fault_destination(tmp_path, "exit_after", attempts=2)
    policy = RetryPolicy(destination.tuning, sleep=no_sleep)
    async with SessionBuddyClient(destination) as client:
        session_id = await policy.call(lambda: client.start_session(start_event()))
        assert await policy.call(lambda: client.end_session(end_event(session_id))) == "ended"
    assert len(server_pids(tmp_path)) == 2


async def test_server_stderr_never_repeats_the_token(tmp_path: Path) -> None:
    """A server that echoes the token on stderr and dies: the error quotes its stderr, minus the token."""
    token = "SECRET-TOKEN-abc123"
    destination = fault_destination(tmp_path, "echo_token")
    async with SessionBuddyClient(destination, token=lambda: token) as client:
        with pytest.raises(ServerUnavailableError) as info:
            await client.start_session(start_event())
    message = str(info.value)
    assert "auth check token=[token]" in message
    assert token not in message


async def test_dead_server_is_noticed_before_the_next_call(tmp_path: Path) -> None:
    """A server killed between calls is replaced without spending an attempt (attempts=1)."""
    async with SessionBuddyClient(fault_destination(tmp_path)) as client:
        await client.start_session(start_event())
        group = client.server_pid
        assert group is not None
        os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while client.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # sleep-ok: the event loop must see the server's exit
        assert not client.connected
        await client.start_session(start_event())
    assert len(server_pids(tmp_path)) == 2


async def test_connection_dropped_mid_answer_is_transient(tmp_path: Path) -> None:
    """Half an answer line, then EOF: ServerUnavailableError, not a hang."""
    async with SessionBuddyClient(fault_destination(tmp_path, "drop_mid_answer")) as client:
        with pytest.raises(ServerUnavailableError, match="closed the connection"):
            await client.start_session(start_event())


async def test_breaker_opens_probes_half_open_and_closes(tmp_path: Path) -> None:
    """Real failures open the breaker; on a fake clock it lets one probe through and closes on success."""
    refuse = tmp_path / "refuse"
    refuse.touch()
    now = [1000.0]
    destination = fault_destination(
        tmp_path, env={"FAULT_REFUSE_FILE": str(refuse)}, breaker_threshold=2, breaker_reset_seconds=30.0
    )
    policy = RetryPolicy(destination.tuning, clock=lambda: now[0])
    async with SessionBuddyClient(destination) as client:

        async def start() -> str:
            return await policy.call(lambda: client.start_session(start_event()))

        for _ in range(2):
            with pytest.raises(ServerUnavailableError):
                await start()
        assert policy.breaker.state == "open"
        with pytest.raises(CircuitOpenError):
            await start()
        assert len(server_pids(tmp_path)) == 2  # the open circuit launched nothing

        now[0] += 30.0
        assert policy.breaker.state == "half_open"
        with pytest.raises(ServerUnavailableError):  # the probe fails: open again
            await start()
        assert policy.breaker.state == "open"

        refuse.unlink()
        now[0] += 30.0
        assert (await start()).startswith("demo-")
        assert policy.breaker.state == "closed"


async def test_close_is_idempotent_and_leaves_no_process_or_pipe(tmp_path: Path) -> None:
    """After aclose the server is gone, no descriptor is left open, and a second aclose is harmless."""
    before = open_fds()
    client = SessionBuddyClient(fault_destination(tmp_path))
    await client.start_session(start_event())
    (pid,) = server_pids(tmp_path)
    await client.aclose()
    await client.aclose()
    assert not process_alive(pid)
    assert open_fds() == before
    with pytest.raises(ServerUnavailableError, match="closed"):
        await client.start_session(start_event())


def test_no_orphan_after_the_client_is_killed(tmp_path: Path) -> None:
    """SIGKILL the client: its server dies too, even one that ignores stdin EOF and SIGTERM (`linger`)."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.support.faults import fault_destination
        from pathlib import Path
        from oneiric_session.tracking.events import build_start_event
        from oneiric_session.tracking.limits import Limits
        from oneiric_session.transport import SessionBuddyClient

        async def main():
            client = SessionBuddyClient(fault_destination(Path({str(tmp_path)!r}), "linger"))
            await client.start_session(build_start_event(
                component_name="orphan", shell_type="T", metadata=None, limits=Limits()))
            print(client.server_pid, flush=True)
            await asyncio.sleep(60)  # sleep-ok: the child is SIGKILLed long before

        asyncio.run(main())
        """
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        launcher = int(client.stdout.readline())
        (server,) = server_pids(tmp_path)
        assert process_alive(launcher) and process_alive(server)
        client.kill()
        client.wait(10)
        assert wait_dead(server, 10.0), "server outlived its client"
        assert wait_dead(launcher, 10.0), "launcher outlived its client"
    finally:
        client.kill()
        client.stdout.close()
