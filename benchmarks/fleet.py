"""Delivery at a distance and at scale: HTTP with added round-trip time, a 10,000-event backlog, a fleet.

http_rtt: the bundled server on Streamable HTTP (`oneiric-session serve --http`) behind
benchmarks/delay_proxy.py (RTT_MS added per round trip); per round one shell process appends K
sessions and the warm agent delivers them through the proxy, vs a bare `mcp.Client` making the
same 2K calls one after another through the same proxy to the same server (`send_request`, as
our transport does: no tool listing or schema validation per call). Rounds alternate.

backlog: EVENTS events (starts and ends of EVENTS/2 sessions) already spooled for one
destination (the bundled server on stdio), then one agent is started: the time from its spawn
until the spool is empty, events/s, and the agent's peak RSS (VmHWM, read while it still runs).
The same backlog with `agent.window` 1 (one call in flight, as before pipelining) is the baseline.

fleet: HOSTS hosts, each its own state directory (HOME, XDG dirs, settings, spool) and its own
agent, all delivering over HTTP (loopback, no added delay) to one `oneiric-session serve --http`.
Each host first runs one session (its agent starts and stays warm); then every host's shell
process is released at once and appends K sessions back to back. Figures: every session
recorded once and ended; sessions/s at the server (release to the last end recorded);
append-to-answer per start (the event's own timestamp, taken by start(), to the server's
recorded_at: the server records then answers); the server's RSS and peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import mcp_types
from common import REPO, Scene, proc_memory_kb, wait_until
from delivery import AGENT_IDLE_SECONDS, CALL_TIMEOUT_SECONDS, recorded, run_worker
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from oneiric_session.config.loader import load_config
from oneiric_session.spool import Spool
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.http_server import HttpServer
from tests.support.server_process import end_event, start_event

PROXY = str(REPO / "benchmarks" / "delay_proxy.py")
RTT_MS = 20.0
WAIT_SECONDS = 300.0
POLL_SECONDS = 0.05

# A fleet host's shell: waits for the release, appends K sessions (start + end) back to back, exits.
HOST_SHELL = textwrap.dedent(
    """
    import sys
    from oneiric_session.tracking.registry import resolve_tracker
    tracker = resolve_tracker()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        handle = tracker.start(component_name=sys.argv[1], shell_type="FleetShell")
        if handle is None or not tracker.end(handle):
            raise SystemExit("a session was not spooled")
    tracker.close()
    """
)


def _http_scene(root: Path, url: str, **settings: str) -> Scene:
    root.mkdir(parents=True, exist_ok=True)
    scene = Scene(root)
    scene.configure(transport="http", url=url, agent__idle_exit_seconds=AGENT_IDLE_SECONDS, **settings)
    return scene


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[HttpServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = HttpServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def delay_proxy(target_port: int, delay_ms: float) -> Iterator[str]:
    """The delaying proxy in its own process; yields its URL for /mcp."""
    proc = subprocess.Popen(
        [sys.executable, PROXY, "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[-1])}/mcp"
    finally:
        proc.terminate()
        proc.wait(30)


# -- http at +RTT ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bare_http_client(url: str) -> AsyncIterator[Client]:
    async with Client(
        streamable_http_client(url), mode="legacy", cache=None, read_timeout_seconds=CALL_TIMEOUT_SECONDS
    ) as client:
        yield client


async def _bare_call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = mcp_types.CallToolRequestParams(name=tool, arguments=arguments)
    request = mcp_types.CallToolRequest(params=params)
    result = await client.session.send_request(request, mcp_types.CallToolResult)
    if result.is_error or not result.structured_content:
        raise RuntimeError(f"bare {tool} refused: {result.content}")
    return dict(result.structured_content)


async def bare_http_session(client: Client, component: str) -> None:
    env = {"python_version": "3.11", "platform": "Linux", "cwd": "/tmp"}
    answer = await _bare_call(
        client, "track_session_start", start_event(component_name=component, environment=env)
    )
    await _bare_call(client, "track_session_end", end_event(answer["session_id"]))


async def http_rtt(root: Path, *, rounds: int, sessions: int, rtt_ms: float = RTT_MS) -> dict[str, Any]:
    with http_server(root / "server") as server, delay_proxy(server.port, rtt_ms / 2) as url:
        scene = _http_scene(root / "host", url)
        await run_worker(scene, "--component", "bench-warmup")  # starts the agent, opens its session
        agent_rates: list[float] = []
        bare_rates: list[float] = []
        async with bare_http_client(url) as client:
            await bare_http_session(client, "bench-warmup")

            async def agent_round() -> None:
                got = await run_worker(scene, "--batch", str(sessions), "--component", "bench-agent")
                agent_rates.append(sessions / got["batch"]["delivered"])

            async def bare_round() -> None:
                began = time.perf_counter()
                for _ in range(sessions):
                    await bare_http_session(client, "bench-bare")
                bare_rates.append(sessions / (time.perf_counter() - began))

            for r in range(rounds):
                for step in (agent_round, bare_round) if r % 2 == 0 else (bare_round, agent_round):
                    await step()
        scene.stop_agents()
        check = recorded(server.db, "bench-agent")
    expected = rounds * sessions
    return {
        "agent": agent_rates,
        "bare": bare_rates,
        "recorded": check,
        "expected": expected,
        "dead_letters": scene.dead(),
        "exactly_once": check == {"rows": expected, "distinct_event_ids": expected, "ended": expected},
    }


# -- backlog ---------------------------------------------------------------------------


def spool_backlog(scene: Scene, sessions: int, component: str) -> None:
    """`sessions` whole sessions spooled at once for the scene's destination (no pid watched).

    The spool's own append path, but not fsync'ed per row (this is set-up, not a figure)."""
    destination = load_config(environ=scene.env).destination()
    limits = Limits()
    spool = Spool(scene.spool_path, max_rows=2**62, max_bytes=2**62, durable=False)
    try:
        for _ in range(sessions):
            handle = f"local-{uuid.uuid4()}"
            start = events.build_start_event(
                component_name=component, shell_type="BacklogShell", metadata=None, limits=limits
            )
            spool.append_start(handle, destination, start, pid=None, pid_start_time=None, boot_id=None)
            end = events.build_end_event(
                session_id=handle, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=limits
            )
            spool.append_end(handle, destination, end)
    finally:
        spool.close()


def backlog(root: Path, *, events_count: int, window: int | None) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    scene = Scene(root, agent__idle_exit_seconds=AGENT_IDLE_SECONDS)
    if window is not None:
        scene.configure(agent__window=str(window))
    sessions = events_count // 2
    spool_backlog(scene, sessions, "bench-backlog")
    assert scene.depth() == events_count
    peak = {"hwm_kb": 0, "rss_kb": 0}
    began = time.perf_counter()
    agent = scene.agent()
    try:

        def drained() -> bool:
            memory = proc_memory_kb(agent.pid)
            if memory:
                peak["hwm_kb"] = max(peak["hwm_kb"], memory["VmHWM"])
                peak["rss_kb"] = max(peak["rss_kb"], memory["VmRSS"])
            return scene.depth() == 0

        wait_until(drained, timeout=WAIT_SECONDS, what="the backlog to drain", poll=POLL_SECONDS)
        seconds = time.perf_counter() - began
        memory = proc_memory_kb(agent.pid)
        if memory:
            peak["hwm_kb"] = max(peak["hwm_kb"], memory["VmHWM"])
    finally:
        scene.stop_agents()
        agent.wait(WAIT_SECONDS)
    check = recorded(scene.db, "bench-backlog")
    return {
        "events": events_count,
        "seconds": round(seconds, 2),
        "events_per_second": round(events_count / seconds, 1),
        "agent_peak_rss_kb": peak["hwm_kb"],
        "exactly_once": check == {"rows": sessions, "distinct_event_ids": sessions, "ended": sessions},
        "recorded": check,
        "dead_letters": scene.dead(),
    }


# -- fleet -----------------------------------------------------------------------------


def _release(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a fleet shell did not get ready")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def _host_shells(scenes: list[Scene], sessions: int, component: str) -> float:
    """One shell per host, released at once; returns the release time (perf_counter)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOST_SHELL, component, str(sessions)],
            env=scene.env,
            cwd=scene.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for scene in scenes
    ]
    try:
        _release(procs)
        released = time.perf_counter()
        for proc in procs:
            if proc.wait(WAIT_SECONDS) != 0:
                raise RuntimeError("a fleet shell failed")
        return released
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _ended(db: Path, component: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM sessions WHERE component_name = ? AND status = 'ended'", (component,)
            ).fetchone()[0]
        )


def _append_to_answer_ms(db: Path, component: str) -> list[float]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT started_at, recorded_at FROM sessions WHERE component_name = ?", (component,)
        ).fetchall()
    return [
        (
            datetime.fromisoformat(recorded_at) - datetime.fromisoformat(started.replace("Z", "+00:00"))
        ).total_seconds()
        * 1000
        for started, recorded_at in rows
    ]


def fleet(root: Path, *, hosts: int, sessions: int) -> dict[str, Any]:
    with http_server(root / "server") as server:
        assert server.process is not None
        scenes = [_http_scene(root / f"host{n}", server.url) for n in range(hosts)]
        _host_shells(scenes, 1, "fleet-warmup")  # every host's agent starts and stays warm
        wait_until(lambda: _ended(server.db, "fleet-warmup") == hosts, timeout=WAIT_SECONDS, what="warm-up")
        released = _host_shells(scenes, sessions, "fleet")
        total = hosts * sessions
        memory_peak = {"rss_kb": 0}

        def all_ended() -> bool:
            memory = proc_memory_kb(server.process.pid) if server.process else {}
            memory_peak["rss_kb"] = max(memory_peak["rss_kb"], memory.get("VmRSS", 0))
            return _ended(server.db, "fleet") >= total

        wait_until(all_ended, timeout=WAIT_SECONDS, what="the fleet's sessions", poll=POLL_SECONDS)
        seconds = time.perf_counter() - released
        server_memory = proc_memory_kb(server.process.pid)
        agents = [scene.agent_pid() for scene in scenes]
        agent_memory = [proc_memory_kb(pid).get("VmHWM", 0) for pid in agents if pid]
        for scene in scenes:
            scene.stop_agents()
        check = recorded(server.db, "fleet")
        latencies = _append_to_answer_ms(server.db, "fleet")
        dead = sum(scene.dead() for scene in scenes)
    return {
        "hosts": hosts,
        "sessions_per_host": sessions,
        "delivery_seconds": round(seconds, 2),
        "sessions_per_second": round(total / seconds, 1),
        "append_to_answer_ms": latencies,
        "exactly_once": check == {"rows": total, "distinct_event_ids": total, "ended": total},
        "recorded": check,
        "dead_letters": dead,
        "server_memory_kb": {
            "rss_kb": max(memory_peak["rss_kb"], server_memory.get("VmRSS", 0)),
            "peak_kb": server_memory.get("VmHWM"),
        },
        "agent_peak_rss_kb_max": max(agent_memory, default=None),
    }


if __name__ == "__main__":  # a quick look at one section: python benchmarks/fleet.py http|backlog|fleet
    import tempfile

    import common

    with tempfile.TemporaryDirectory(prefix="oneiric-fleet-") as tmp:
        which = sys.argv[1] if len(sys.argv) > 1 else "http"
        if which == "http":
            out: Any = asyncio.run(http_rtt(Path(tmp), rounds=2, sessions=20))
        elif which == "backlog":
            count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
            out = backlog(Path(tmp), events_count=count, window=None)
        else:
            out = fleet(Path(tmp), hosts=int(sys.argv[2]) if len(sys.argv) > 2 else 4, sessions=5)
        common.reap(Path(tmp))
        print(json.dumps(out, indent=2, default=str))
