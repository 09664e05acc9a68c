"""Hardening items 7-13: delivery that survives clocks, careless hands, other hosts and caps.

Real agents, shells, spools and the bundled server where the fault is about processes and files;
an injected clock where it is about time (a clock step cannot be made real in a test).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneiric_session import wakeup
from oneiric_session.agent import DeliveryAgent
from oneiric_session.config.loader import load_config
from oneiric_session.errors import ServerUnavailableError
from oneiric_session.spool import Spool
from oneiric_session.tracking import events, procinfo
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import Scene, wait_until

DAY = 86400.0


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    scene = Scene(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])  # this process finds its socket
    yield scene
    scene.stop_agents()


def _log(scene: Scene) -> Path:
    return wakeup.agent_log_path(scene.spool_path)


def _start_event(component: str = "demo", **kwargs: Any) -> dict[str, Any]:
    return events.build_start_event(
        component_name=component, shell_type="HardeningShell", metadata=None, limits=Limits(), **kwargs
    )


def _end_event(handle: str) -> dict[str, Any]:
    return events.build_end_event(
        session_id=handle, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )


def _schedstat(pid: int) -> tuple[float, float]:
    """Seconds a process spent on a CPU, and waiting for one (runnable): /proc/PID/schedstat."""
    on_cpu, queued = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    return on_cpu / 1e9, queued / 1e9


# -- 7. an agent spinning on rows not yet due ---------------------------------------------------


@pytest.mark.hardening(
    item=7,
    fault="a new agent finds rows whose next attempt is 10 minutes away (a previous agent's back-off)",
    outcome="it sleeps until the earliest due row or a wake-up: under 5% of a CPU while it waits",
)
def test_an_agent_with_rows_not_yet_due_sleeps(scene: Scene) -> None:
    scene.configure(retry__wait_max_seconds="3600")  # a back-off of 10 minutes is within the cap
    destination = load_config(environ=scene.env).destination()
    me = procinfo.identify()
    with scene.spool() as spool:
        spool.append_start(
            "local-waiting",
            destination,
            _start_event(),
            pid=me.pid,
            pid_start_time=me.start_time,
            boot_id=me.boot_id,
        )
        (row,) = spool.list_pending()
        spool.record_failure(row, "server unreachable", time.time() + 600)
    agent = scene.start_agent()
    cpu, queued = _schedstat(agent.pid)
    began = time.monotonic()
    time.sleep(3.0)  # sleep-ok: the CPU a real process uses over wall time is what is measured
    cpu_after, queued_after = _schedstat(agent.pid)
    wall = time.monotonic() - began
    assert agent.poll() is None  # it stays: a row waits and a session is open
    # A spinning loop is always runnable: on a CPU or queued for one (whatever the machine's load).
    assert (cpu_after - cpu) / wall < 0.05
    assert (cpu_after - cpu + queued_after - queued) / wall < 0.25
    assert scene.depth() == 1  # not sent early


# -- 8. the wall clock stepping back ------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class _Server:
    """A destination that is down until told otherwise (what the agent's client sees of it)."""

    def __init__(self) -> None:
        self.down = True
        self.started: list[str] = []


class _Client:
    def __init__(self, server: _Server) -> None:
        self.server = server

    async def start_session(self, event: dict[str, Any]) -> str:
        if self.server.down:
            raise ServerUnavailableError("connection refused")
        self.server.started.append(event["event_id"])
        return f"srv-{len(self.server.started)}"

    async def end_session(self, event: dict[str, Any]) -> str:
        if self.server.down:
            raise ServerUnavailableError("connection refused")
        return "ok"

    async def aclose(self) -> None:
        return None


_TUNING = Tuning(wait_min_seconds=1.0, wait_max_seconds=30.0, multiplier=2.0)
_DESTINATION = Destination(command="session-buddy-test", tuning=_TUNING)


def _agent(spool: Spool, clock: _Clock, server: _Server) -> DeliveryAgent:
    return DeliveryAgent(
        spool,
        client_factory=lambda destination, token: _Client(server),
        monotonic=lambda: clock.mono,
        wall=lambda: clock.wall,
    )


def _one_pass(agent: DeliveryAgent) -> None:
    """One scheduling pass of the agent, its workers run to their end."""

    async def go() -> None:
        agent._destinations.schedule(replaying=False)
        await asyncio.gather(*agent._destinations.tasks())
        await asyncio.sleep(0)  # the workers' done callbacks

    asyncio.run(go())


def _clocked_spool(tmp_path: Path, clock: _Clock) -> Spool:
    return Spool(
        tmp_path / "spool.sqlite3",
        max_rows=2**62,
        max_bytes=2**62,
        max_age_seconds=float("inf"),
        clock=lambda: clock.wall,
    )


@pytest.mark.hardening(
    item=8,
    fault="server down, rows backing off, then the wall clock corrected one day backwards",
    outcome="the running agent times its back-off in monotonic time: delivered once it ends",
)
def test_a_wall_clock_step_back_does_not_stall_a_running_agent(tmp_path: Path) -> None:
    clock, server = _Clock(), _Server()
    with _clocked_spool(tmp_path, clock) as spool:
        spool.append_start(
            "local-a", _DESTINATION, _start_event(), pid=None, pid_start_time=None, boot_id=None
        )
        agent = _agent(spool, clock, server)
        _one_pass(agent)
        assert agent.delivered == 0 and spool.stats().depth == 1  # backing off
        clock.wall -= DAY  # NTP fixes a clock that ran a day ahead
        clock.mono += _TUNING.wait_max_seconds
        server.down = False
        _one_pass(agent)
        assert agent.delivered == 1
        assert spool.stats().depth == 0


@pytest.mark.hardening(
    item=8,
    fault="a new agent reads a next attempt one day ahead (written before the clock stepped back)",
    outcome="deadlines read from the spool are bounded by the back-off cap: delivered within it",
)
def test_a_deadline_read_from_the_spool_is_bounded_by_the_backoff_cap(tmp_path: Path) -> None:
    clock, server = _Clock(), _Server()
    server.down = False
    with _clocked_spool(tmp_path, clock) as spool:
        spool.append_start(
            "local-a", _DESTINATION, _start_event(), pid=None, pid_start_time=None, boot_id=None
        )
        (row,) = spool.list_pending()
        spool.record_failure(row, "connection refused", clock.wall + DAY + 5)
        agent = _agent(spool, clock, server)
        _one_pass(agent)
        assert agent.delivered == 0  # not due yet
        clock.advance(_TUNING.wait_max_seconds)
        _one_pass(agent)
        assert agent.delivered == 1
        assert spool.stats().depth == 0


# -- 9. the wall clock stepping forward -----------------------------------------------------------


class _WallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _start(spool: Spool, handle: str) -> bool:
    return spool.append_start(
        handle, _DESTINATION, _start_event(handle), pid=None, pid_start_time=None, boot_id=None
    )


def _kinds(spool: Spool) -> list[tuple[str, str]]:
    return [(row.handle, row.kind) for row in spool.list_pending() + spool.list_dead()]


@pytest.mark.hardening(
    item=9,
    fault="the wall clock steps forward 31 days (a VM resumed) with a session open and one ended",
    outcome="the age cap drops whole sessions only: the open one is kept, its end delivered with it",
)
def test_a_clock_step_forward_never_drops_an_open_session(tmp_path: Path) -> None:
    clock = _WallClock()
    with Spool(tmp_path / "spool.sqlite3", max_age_seconds=30 * DAY, clock=clock) as spool:
        assert _start(spool, "open")
        assert _start(spool, "done")
        assert spool.append_end("done", _DESTINATION, _end_event("done"))
        assert _start(spool, "ending")
        clock.now += 31 * DAY
        assert spool.append_end("ending", _DESTINATION, _end_event("ending"))  # its end is fresh
        assert _start(spool, "later")
        assert _kinds(spool) == [
            ("open", "start"),
            ("ending", "start"),
            ("ending", "end"),
            ("later", "start"),
        ]
        assert spool.append_end("open", _DESTINATION, _end_event("open"))  # not "no_start"
        stats = spool.stats()
        assert stats.drops == {"max_age": 2}
        assert stats.dropped_sessions == {"max_age": 1}  # "done", whole
        clock.now += 31 * DAY
        assert spool.enforce_limits() == {"max_age": 4}  # old and ended: each whole; "later" is open
        assert _kinds(spool) == [("later", "start")]


# -- 12. a row cap cutting a delivered session in half ------------------------------------------


@pytest.mark.hardening(
    item=12,
    fault="spool.max_rows reached while the end of a session already started at the server waits",
    outcome="caps drop whole sessions, oldest first, never that end; counted and shown in status",
)
def test_a_row_cap_never_cuts_a_delivered_session_in_half(scene: Scene) -> None:
    scene.configure(spool__max_rows="3")
    with Spool(scene.spool_path, max_rows=3) as spool:
        assert _start(spool, "delivered")
        (row,) = spool.next_batch()
        assert spool.ack_start(row, "srv-1")  # the server knows this session
        assert spool.append_end("delivered", _DESTINATION, _end_event("delivered"))  # the oldest row
        assert _start(spool, "a")
        assert spool.append_end("a", _DESTINATION, _end_event("a"))
        assert _kinds(spool) == [("delivered", "end"), ("a", "start"), ("a", "end")]
        assert _start(spool, "b")  # 4 rows: "a" goes whole, the delivered session's end stays
        assert _start(spool, "c")
        assert _kinds(spool) == [("delivered", "end"), ("b", "start"), ("c", "start")]
        (end,) = [r for r in spool.next_batch() if r.kind == "end"]
        assert end.server_session_id == "srv-1"
    result = scene.run("status", "--json")
    assert result.returncode == 0, result.stderr
    delivery = json.loads(result.stdout)["delivery"]
    assert delivery["drops"] == {"max_rows": 2}
    assert delivery["dropped_sessions"] == {"max_rows": 1}


# -- 11. shells the agent cannot see --------------------------------------------------------------


def _can_unshare() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# A real shell elsewhere: in its own PID namespace (a container sharing the state directory), or
# also under another host name (its own UTS namespace).
_ELSEWHERE = {
    "another PID namespace": ["unshare", "--pid", "--fork", "--mount-proc"],
    "another host and namespace": [
        *("unshare", "--uts", "--pid", "--fork", "--mount-proc"),
        *("sh", "-c", 'hostname shared-home-host && exec "$@"', "sh"),
    ],
}


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare(1) with CAP_SYS_ADMIN (run as root)")
@pytest.mark.parametrize("where", list(_ELSEWHERE))
@pytest.mark.hardening(
    item=11,
    fault="a live shell in another PID namespace, or on another host, shares the spool",
    outcome="the agent leaves its pid alone: the session stays open until the shell ends it",
)
def test_a_shell_the_agent_cannot_see_is_not_ended_as_abnormal(scene: Scene, where: str) -> None:
    from tests.support.delivery import SHELL

    # The host's agent, up before the shell and staying (one spawned in the namespace would die with it).
    agent = scene.start_agent("--idle-exit-seconds", "600")
    shell = scene.popen([*_ELSEWHERE[where], sys.executable, "-c", SHELL, "1", "hold", "contained"])
    assert shell.stdout is not None and shell.stdin is not None
    handle = shell.stdout.readline().strip()
    assert handle.startswith("local-"), shell.stderr.read() if shell.stderr else ""
    wait_until(lambda: [s for s in scene.sessions() if s["status"] == "open"], what="the start")
    time.sleep(4.0)  # sleep-ok: the agent watches open sessions every second; the shell lives on
    assert [s["status"] for s in scene.sessions()] == ["open"]
    with scene.spool() as spool:
        assert [s.handle for s in spool.open_sessions()] == [handle]
    shell.stdin.close()
    assert shell.wait(timeout=60) == 0

    def ended() -> list[dict[str, Any]]:
        return [s for s in scene.sessions() if s["status"] == "ended"]

    (session,) = wait_until(ended, what="the shell's own end")
    assert session["exit_reason"] == "user_exit"
    assert scene.agent_pid() == agent.pid  # the host's agent delivered both


@pytest.mark.hardening(
    item=11,
    fault="a start spooled by a shell on another host (NFS home): its pid is not running here",
    outcome="the running agent leaves it to that host's agent: not ended as abnormal",
)
def test_a_session_of_another_host_is_left_alone(scene: Scene) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is not running here
    destination = load_config(environ=scene.env).destination()
    with scene.spool() as spool:
        spool.append_start(
            "local-far",
            destination,
            _start_event(),
            pid=gone.pid,
            pid_start_time=12345,
            boot_id="the-other-hosts-boot-id",
            host="another-host.example",
            pid_ns=procinfo.pid_namespace(),
        )
        # Its start already reached the server, from the other host's agent: nothing to deliver here.
        (row,) = spool.next_batch()
        spool.ack_start(row, "srv-far")
    agent = scene.start_agent()
    time.sleep(3.0)  # sleep-ok: the agent watches open sessions every second
    assert agent.poll() is None
    with scene.spool() as spool:
        assert [s.handle for s in spool.open_sessions()] == ["local-far"]
        assert spool.list_pending() == []


@pytest.mark.hardening(
    item=11,
    fault="a shell of another host opened a session, then nothing was heard of it for 7 days",
    outcome="ended as abnormal by the documented staleness rule (FOREIGN_STALE_SECONDS), not before",
)
def test_another_hosts_session_is_ended_only_when_stale(tmp_path: Path) -> None:
    from oneiric_session.agent import FOREIGN_STALE_SECONDS

    clock, server = _Clock(), _Server()
    with _clocked_spool(tmp_path, clock) as spool:
        spool.append_start(
            "local-far",
            _DESTINATION,
            _start_event(),
            pid=1,  # alive here, but it is another host's pid 1
            pid_start_time=1,
            boot_id="another-boot",
            host="another-host.example",
            pid_ns="pid:[1]",
        )
        agent = _agent(spool, clock, server)
        clock.advance(FOREIGN_STALE_SECONDS - 60)
        assert [s.handle for s in agent.watch_sessions()] == ["local-far"]
        assert [row.kind for row in spool.list_pending()] == ["start"]
        clock.advance(120)
        assert agent.watch_sessions() == []
        (end,) = [row for row in spool.list_pending() if row.kind == "end"]
        assert end.payload["metadata"]["exit_reason"] == "abnormal"


# -- 10. the WAL deleted under a running agent ----------------------------------------------------


@pytest.mark.parametrize("deleted", [("-wal",), ("-wal", "-shm")], ids=["wal", "wal+shm"])
@pytest.mark.hardening(
    item=10,
    fault="rm spool.sqlite3-wal (or -wal and -shm) while the agent and a shell hold the spool",
    outcome="each notices the files are not the ones on disk, joins again, merges: all 7 sessions arrive",
)
def test_the_wal_deleted_under_a_running_agent_loses_nothing(scene: Scene, deleted: tuple[str, ...]) -> None:
    scene.start_agent()
    held = scene.shell(1, hold=True, component="held")  # its session keeps the agent; it holds the spool
    assert held.stdout is not None and held.stdin is not None
    assert held.stdout.readline().strip().startswith("local-")
    wait_until(lambda: scene.sessions(), what="the held session's start")
    for suffix in deleted:
        os.unlink(f"{scene.spool_path}{suffix}")
    for n in range(6):
        scene.run_shell(1, component=f"after{n}")
    held.stdin.close()
    assert held.wait(timeout=60) == 0

    def all_ended() -> list[dict[str, Any]]:
        sessions = scene.sessions()
        return sessions if len(sessions) >= 7 and all(s["status"] == "ended" for s in sessions) else []

    sessions = wait_until(all_ended, what="all seven sessions to be delivered")
    assert sorted(s["component_name"] for s in sessions) == [
        "after0",
        "after1",
        "after2",
        "after3",
        "after4",
        "after5",
        "held",
    ]
    assert all(s["exit_reason"] == "user_exit" for s in sessions)
    log = _log(scene).read_text()
    assert log.count("joined the spool on disk again") == 1  # said once by the agent
    result = scene.run("status", "--json")
    assert result.returncode == 0, result.stderr
    assert "joined the spool on disk again" in json.loads(result.stdout)["delivery"]["spool_rejoined"]


# -- 13. spool.max_bytes and the files on disk ---------------------------------------------------


@pytest.mark.hardening(
    item=13,
    fault="spool.max_bytes=65536, server down: 300 sessions of 1.5 KiB spooled (files were 69x the cap)",
    outcome="the WAL is checkpointed and truncated within a quarter of the cap: under 4x; status shows both",
)
def test_max_bytes_bounds_the_files_on_disk(scene: Scene) -> None:
    from oneiric_session.agent import uncapped_spool

    cap = 65536
    scene.configure(spool__max_bytes=str(cap))
    with uncapped_spool(scene.spool_path) as agent_view:  # an agent holds the spool open throughout
        agent_view.open()
        for n in range(300):
            with Spool(scene.spool_path, max_bytes=cap, checkpoint_on_close=False) as shell:  # one shell
                handle = f"local-{n}"
                event = {**_start_event(f"c{n}"), "metadata": {"filler": "x" * 1000}}
                assert shell.append_start(
                    handle, _DESTINATION, event, pid=None, pid_start_time=None, boot_id=None
                )
                assert shell.append_end(
                    handle, _DESTINATION, {**_end_event(handle), "metadata": {"f": "y" * 500}}
                )
        assert agent_view.stats().bytes <= cap
        assert agent_view.stats().drops["max_bytes"] > 0
        on_disk = sum(os.stat(f"{scene.spool_path}{suffix}").st_size for suffix in ("", "-wal", "-shm"))
        assert on_disk <= 4 * cap
        result = scene.run("status", "--json")
    assert result.returncode == 0, result.stderr
    delivery = json.loads(result.stdout)["delivery"]
    assert delivery["spool_bytes"] <= cap
    assert 0 < delivery["spool_disk_bytes"] <= 4 * cap
