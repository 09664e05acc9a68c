"""The fault suite's world: real shells, agents and a server a test breaks and heals in place.

Everything runs as real processes under one tmp dir (see tests/support/delivery.Scene).
The destination is tests/faults/switch_server.py, so a test breaks the server by writing
a control file and heals it by removing that file: the destination the spool recorded
stays the same. What each event became is read back from the servers (the bundled
server's database, the fault server's call record) and from the spool.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneiric_session.agent.status import delivery_status
from oneiric_session.spool import DEFAULT_BUSY_TIMEOUT_SECONDS, SpooledEvent
from tests.support.delivery import WAIT_SECONDS, Scene, process_gone, wait_until

SWITCH_SERVER = str(Path(__file__).with_name("switch_server.py"))
# start() and end() in the shell's process must return within this. Generous on purpose: the
# benchmark checks the real targets; this catches a shell that waits for a server at all.
SHELL_CALL_BOUND_SECONDS = 1.0
# With more shells than cores, a writer holding the spool's lock waits for a CPU and the others
# wait for it: the bound is then the spool's busy timeout, past which an append is a loss.
CROWDED_BLOCKED_BOUND_SECONDS = DEFAULT_BUSY_TIMEOUT_SECONDS

# A shell as a host uses the tracker: start `count` sessions, print their handles and how long
# each start() took, optionally wait on stdin (to be killed), end them, close, report. Each call
# is timed as (wall, blocked): blocked is the wall time minus the time on a CPU or waiting for one
# (/proc/self/schedstat), i.e. the time the call really waited (I/O, locks, sleeps).
SHELL = textwrap.dedent(
    """
    import json, sys, time
    from oneiric_session.tracking.registry import resolve_tracker

    def clock():
        try:
            with open("/proc/self/schedstat") as stat:
                on_cpu, queued = (int(x) for x in stat.read().split()[:2])
        except OSError:
            on_cpu = queued = 0
        return time.perf_counter(), (on_cpu + queued) / 1e9

    def timed(call, *args, **kwargs):
        (wall, busy), result = clock(), call(*args, **kwargs)
        wall_after, busy_after = clock()
        return result, (wall_after - wall, wall_after - wall - (busy_after - busy))

    count, mode, component = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    tracker = resolve_tracker()
    handles, starts = [], []
    for n in range(count):
        handle, took = timed(tracker.start, component_name=f"{component}x{n}", shell_type="FaultShell")
        handles.append(handle)
        starts.append(took)
    print(json.dumps({"provider": tracker.provider, "handles": handles, "starts": starts}), flush=True)
    if mode == "hold":
        sys.stdin.read()
    ends, ended = [], []
    for handle in handles:
        if handle is None:
            continue  # nothing was recorded, so a host has nothing to end
        done, took = timed(tracker.end, handle, exit_reason="user_exit")
        ended.append(done)
        ends.append(took)
    tracker.close()
    losses = dict(getattr(tracker, "losses", {}))
    print(json.dumps({"ends": ends, "ended": ended, "losses": losses, "mcp": "mcp" in sys.modules}))
    """
)


@dataclass
class ShellRun:
    """One shell process: its sessions (component -> handle or None) and what it measured."""

    components: list[str]
    handles: list[str | None]
    start_seconds: list[tuple[float, float]]  # (wall, blocked) per start()
    end_seconds: list[tuple[float, float]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    losses: dict[str, int] = field(default_factory=dict)
    stderr: str = ""
    killed: bool = False


@dataclass
class Ledger:
    """Where each event is now: delivered (per server), waiting in the spool, or a dead letter."""

    starts: collections.Counter[str]  # component -> starts a server accepted
    ends: collections.Counter[str]  # component -> ends a server accepted
    exit_reasons: dict[str, str | None]  # component -> the exit reason its end carried
    pending: list[tuple[str, str]]  # (kind, component)
    dead: list[tuple[str, str, str, str]]  # (kind, component, category, reason)

    def delivered(self) -> set[tuple[str, str]]:
        return {("start", c) for c in self.starts} | {("end", c) for c in self.ends}


def _answered_calls(records: list[dict[str, Any]], launches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fault server's tool calls it answered with success (a refusal or a hang is no delivery)."""
    faults = {launch["pid"]: launch.get("fault") or {} for launch in launches}
    per_pid: collections.Counter[int] = collections.Counter()
    answered = []
    for record in records:
        if record.get("method") != "tools/call":
            continue
        fault = faults.get(record["pid"], {})
        modes = set(fault.get("FAULT_MODE", "").split(","))
        per_pid[record["pid"]] += 1
        if modes & {"hang_call", "hang_initialize", "drop_mid_answer", "refuse_start"}:
            continue
        if modes & {"status_error", "validation_error", "auth_emoji", "auth_plain", "auth_wrapped"}:
            continue
        if "exit_after" in modes and per_pid[record["pid"]] > int(fault.get("FAULT_EXIT_AFTER", "1")):
            continue  # the server exited on this call instead of answering it
        answered.append(record)
    return answered


class FaultScene(Scene):
    """A Scene whose server is the switchable one, with settings short enough for a fast suite."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.control = tmp_path / "fault.json"
        self.launch_log = tmp_path / "launches.jsonl"
        self.record = tmp_path / "record.jsonl"
        self.components: dict[str, str] = {}  # handle -> component
        self.hand_started: list[subprocess.Popen[str]] = []
        self._key: str | None = None
        self.configure(
            server__command=sys.executable,
            server__args=[SWITCH_SERVER, "--db", str(self.db)],
            server__env={
                "FAULT_CONTROL": str(self.control),
                "FAULT_LAUNCHES": str(self.launch_log),
                "FAULT_RECORD": str(self.record),
            },
            breaker__reset_seconds="1",
        )
        self.default_timeouts()

    def default_timeouts(self) -> None:
        """Timeouts for a healthy server on a busy machine (a test shortens one to provoke it)."""
        self.configure(timeouts__connect_seconds="20", timeouts__call_seconds="10")

    # -- the server -----------------------------------------------------------

    def break_server(self, mode: str, **variables: str) -> None:
        """From the next launch on, the server is the fault server in `mode`."""
        self.control.write_text(json.dumps({"FAULT_MODE": mode, **variables}), encoding="utf-8")

    def heal(self) -> None:
        """From the next launch on, the server is the healthy bundled one (with the usual timeouts)."""
        self.control.unlink(missing_ok=True)
        self.default_timeouts()

    def launches(self) -> list[dict[str, Any]]:
        """One {"pid", "fault"} per server launched (fault: None for the bundled server)."""
        if not self.launch_log.exists():
            return []
        return [json.loads(line) for line in self.launch_log.read_text().splitlines()]

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    # -- shells ---------------------------------------------------------------

    def _shell_process(self, count: int, mode: str, component: str, env: dict[str, str] | None) -> Any:
        return subprocess.Popen(
            [sys.executable, "-c", SHELL, str(count), mode, component],
            env={**self.env, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )

    def _finish(self, proc: subprocess.Popen[str], component: str, count: int) -> ShellRun:
        out, err = proc.communicate(timeout=WAIT_SECONDS)
        assert proc.returncode == 0, f"the shell failed (something raised into the host):\n{err}"
        assert "Traceback" not in err, err
        first, last = (json.loads(line) for line in out.splitlines()[:2])
        assert first["provider"] == "session-buddy"
        assert last["mcp"] is False, "the shell's process imported mcp"
        run = ShellRun(
            components=[f"{component}x{n}" for n in range(count)],
            handles=first["handles"],
            start_seconds=[(wall, blocked) for wall, blocked in first["starts"]],
            end_seconds=[(wall, blocked) for wall, blocked in last["ends"]],
            ended=last["ended"],
            losses=last["losses"],
            stderr=err,
        )
        self._remember(run)
        return run

    def _remember(self, run: ShellRun) -> None:
        for component, handle in zip(run.components, run.handles, strict=True):
            if handle is not None:
                self.components[handle] = component

    def shells(
        self, count: int, *, prefix: str, sessions: int = 1, env: dict[str, str] | None = None
    ) -> list[ShellRun]:
        """`count` shells started at once, each with `sessions` sessions, run to their end."""
        procs = [
            (self._shell_process(sessions, "go", f"{prefix}{n}", env), f"{prefix}{n}") for n in range(count)
        ]
        return [self._finish(proc, component, sessions) for proc, component in procs]

    def held_shell(self, component: str) -> tuple[subprocess.Popen[str], ShellRun]:
        """A shell that started one session and waits (for a test to kill it)."""
        proc = self._shell_process(1, "hold", component, None)
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        starts = [(wall, blocked) for wall, blocked in first["starts"]]
        run = ShellRun(components=[f"{component}x0"], handles=first["handles"], start_seconds=starts)
        self._remember(run)
        return proc, run

    # -- agents ---------------------------------------------------------------

    def agent_by_hand(self, kill_after: str | None = None) -> subprocess.Popen[str]:
        """An agent that holds the lock and listens before this returns."""
        agent = self.start_agent(log=self.root / "agent.log", kill_after=kill_after)
        self.hand_started.append(agent)
        return agent

    def status(self) -> dict[str, Any]:
        if self._key is None:  # timeouts are not part of the key: computed once
            from oneiric_session.config.loader import load_config

            self._key = load_config(environ=self.env).destination().key
        return delivery_status(self.spool_path, destination_key=self._key)

    def last_error(self) -> str | None:
        return self.status()["last_error"] if self.spool_path.exists() else None

    def cleanup(self) -> None:
        """Stop every agent and server this scene started (SIGKILL what does not stop)."""
        self.stop_agents()
        for agent in self.hand_started:
            if agent.poll() is None:
                agent.kill()
            agent.wait(timeout=WAIT_SECONDS)
        for launch in self.launches():
            with contextlib.suppress(ProcessLookupError):
                if not process_gone(launch["pid"]):
                    os.kill(launch["pid"], signal.SIGKILL)

    def servers_left(self) -> list[int]:
        """Server processes still running once every agent is gone (waits for them to go, bounded)."""
        self.stop_agents()
        for agent in self.hand_started:
            if agent.poll() is None:
                agent.terminate()
            agent.wait(timeout=WAIT_SECONDS)
        pids = [launch["pid"] for launch in self.launches()]
        with contextlib.suppress(AssertionError):
            wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10, what="servers to exit")
        return [pid for pid in pids if not process_gone(pid)]

    # -- where the events are -------------------------------------------------

    def _component(self, row: SpooledEvent) -> str:
        return row.payload.get("component_name") or self.components.get(row.handle, row.handle)

    def _bundled_sessions(self) -> list[tuple[str, str, str | None]]:
        """(component, status, exit reason) of each session the bundled server recorded."""
        if not self.db.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            try:
                return db.execute("SELECT component_name, status, exit_reason FROM sessions").fetchall()
            except sqlite3.OperationalError:  # the server is still creating its schema
                return []

    def ledger(self) -> Ledger:
        starts: collections.Counter[str] = collections.Counter()
        ends: collections.Counter[str] = collections.Counter()
        reasons: dict[str, str | None] = {}
        for component, status, reason in self._bundled_sessions():
            starts[component] += 1
            if status == "ended":
                ends[component] += 1
                reasons[component] = reason
        for call in _answered_calls(self.records(), self.launches()):
            arguments = call["arguments"]
            if call["tool"] == "track_session_start":
                starts[arguments["component_name"]] += 1
            else:  # the fault server's session id is "<component>-<date>-<time>"
                component = arguments["session_id"].rsplit("-", 2)[0]
                ends[component] += 1
                reasons[component] = (arguments.get("metadata") or {}).get("exit_reason")
        pending: list[tuple[str, str]] = []
        dead: list[tuple[str, str, str, str]] = []
        if self.spool_path.exists():
            with self.spool() as spool:
                pending = [(row.kind, self._component(row)) for row in spool.list_pending()]
                dead = [
                    (row.kind, self._component(row), row.dead_category or "", row.dead_reason or "")
                    for row in spool.list_dead()
                ]
        return Ledger(starts=starts, ends=ends, exit_reasons=reasons, pending=pending, dead=dead)


def expected_events(runs: Iterable[ShellRun]) -> set[tuple[str, str]]:
    """Every event the shells produced (a killed shell's end is the agent's to produce)."""
    events = set()
    for run in runs:
        for component, handle in zip(run.components, run.handles, strict=True):
            if handle is not None:
                events |= {("start", component), ("end", component)}
    return events


def lost_sessions(runs: Iterable[ShellRun]) -> list[str]:
    return [c for run in runs for c, h in zip(run.components, run.handles, strict=True) if h is None]


def check_shells(runs: Iterable[ShellRun], *, crowded: bool = False) -> dict[str, Any]:
    """Every start() and end() returned within the bound; what they measured (for the results).

    With `crowded` (more processes than cores), the wall time is the scheduler's doing: the
    bound is then on the time the calls were blocked, up to the spool's busy timeout.
    """
    runs = list(runs)
    starts = [t for run in runs for t in run.start_seconds]
    ends = [t for run in runs for t in run.end_seconds]
    calls = starts + ends
    blocked = max(b for _, b in calls)
    if crowded:
        assert blocked < CROWDED_BLOCKED_BOUND_SECONDS, f"a shell-side call waited {blocked:.3f} s"
    else:
        slowest = max(w for w, _ in calls)
        assert slowest < SHELL_CALL_BOUND_SECONDS, f"a shell-side call took {slowest:.3f} s"
    for run in runs:
        if not run.killed:
            assert all(run.ended), "an end the shell made was not recorded"
    return {
        "shells": len(runs),
        "max_start_ms": round(max(w for w, _ in starts) * 1000, 2),
        "max_end_ms": round(max(w for w, _ in ends) * 1000, 2) if ends else None,
        "max_blocked_ms": round(blocked * 1000, 2),
    }


def account(scene: FaultScene, runs: Iterable[ShellRun], *, moved_aside: int = 0) -> dict[str, int]:
    """Every event is delivered, waiting, or a dead letter with a reason (or counted as lost)."""
    runs = list(runs)
    ledger = scene.ledger()
    expected = expected_events(runs)
    lost = lost_sessions(runs)
    kept = ledger.delivered() | set(ledger.pending) | {(kind, c) for kind, c, _, _ in ledger.dead}
    unaccounted = expected - kept
    assert len(unaccounted) <= moved_aside, f"events neither delivered, spooled nor dead: {unaccounted}"
    assert all(category and reason for _, _, category, reason in ledger.dead), ledger.dead
    assert sum(sum(run.losses.values()) for run in runs) == len(lost)
    return {
        "events": len(expected) + len(lost),
        "delivered": len(expected & ledger.delivered()),
        "spooled": len(ledger.pending),
        "dead": len(ledger.dead),
        "lost": len(lost),
        "moved_aside": moved_aside,
    }


def delivered_once(
    scene: FaultScene,
    runs: Iterable[ShellRun],
    *,
    reasons: dict[str, str] | None = None,
    skip: Iterable[str] = (),
) -> dict[str, Any]:
    """After the fault cleared: each kept session started and ended exactly once, nothing waits."""
    runs = list(runs)
    skipped = set(skip) | set(lost_sessions(runs))
    components = sorted({c for kind, c in expected_events(runs)} - skipped)

    def settled() -> Ledger | None:
        ledger = scene.ledger()
        return ledger if not ledger.pending and set(ledger.ends) >= set(components) else None

    ledger = wait_until(settled, what="every session to be delivered")
    assert ledger.dead == []
    assert {c: ledger.starts[c] for c in components} == dict.fromkeys(components, 1)
    assert {c: ledger.ends[c] for c in components} == dict.fromkeys(components, 1)
    assert set(ledger.starts) == set(components), "a session reached a server that no shell kept"
    expected = {c: (reasons or {}).get(c, "user_exit") for c in components}
    assert {c: ledger.exit_reasons[c] for c in components} == expected
    return {"sessions": len(components), "exit_reasons": dict(collections.Counter(expected.values()))}
