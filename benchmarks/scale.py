"""N shells starting at once against one server: recorded exactly once, slowest start, processes, memory.

What is measured: N processes (not full pty shells: 128 REPLs do not fit a 2-core budget)
each load what a shell loads before its tracker (`oneiric_session.shell`), wait at a barrier,
and on release do what a shell does before its prompt: resolve the tracker and start() its
session. Each reports that time; the slowest is the slowest prompt's delay. The same N with
provider `noop` is the baseline. One shell ran before in the scene (so the validated-config
cache and the spool exist, as for any user after a first shell), but no agent runs at the
release: the shells themselves spawn the agent, and the agent the server; each shell reports its
resolve_tracker() and start() times apart. Then every shell ends its
session and exits; once the spool is drained the server's database must hold each session
exactly once, ended. A sampler reads /proc every SAMPLE_SECONDS for the agent and server
processes of this scene: how many at once, how many in all, and their memory; every agent
started (a second one exits at once, often between samples) is counted from the agent log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from common import Scene, proc_memory_kb, processes_under, wait_until
from delivery import recorded

from oneiric_session.wakeup import agent_log_path

SAMPLE_SECONDS = 0.02
TRACKED = "scale-tracked-"  # component name prefix of the session-buddy shells
WAIT_SECONDS = 180.0

SHELL = textwrap.dedent(
    """
    import json, sys, time
    import oneiric_session.shell  # what a shell has loaded before it resolves its tracker
    print("ready", flush=True)
    sys.stdin.readline()
    began = time.perf_counter()
    from oneiric_session.tracking.registry import resolve_tracker
    tracker = resolve_tracker()
    resolved = time.perf_counter()
    handle = tracker.start(component_name=sys.argv[1], shell_type="ScaleShell")
    done = time.perf_counter()
    print(json.dumps({"start_ms": (done - began) * 1000, "resolve_ms": (resolved - began) * 1000,
                      "call_ms": (done - resolved) * 1000, "recorded": handle is not None}), flush=True)
    sys.stdin.readline()
    if handle is not None:
        tracker.end(handle)
    tracker.close()
    """
)


class Sampler(threading.Thread):
    """Counts this scene's agent and server processes and keeps their memory, until stopped."""

    def __init__(self, scene: Scene) -> None:
        super().__init__(daemon=True)
        self.scene = scene
        self.stopped = threading.Event()
        self.seen: dict[str, set[int]] = {"agent": set(), "server": set()}
        self.most_at_once = {"agent": 0, "server": 0}
        self.memory: dict[int, dict[str, Any]] = {}  # pid -> kind, last VmRSS, highest VmHWM

    def kind(self, cmdline: str) -> str | None:
        if "_reaper.py" in cmdline:
            return None  # the transport's stdlib launcher that ties the server's life to the agent's
        if " serve " in cmdline and str(self.scene.db) in cmdline:
            return "server"
        if " agent " in cmdline and str(self.scene.spool_path) in cmdline:
            return "agent"
        return None

    def sample(self) -> None:
        now = {"agent": 0, "server": 0}
        for pid, cmdline in processes_under(self.scene.root, in_cmdline_only=True).items():
            kind = self.kind(cmdline)
            if kind is None:
                continue
            now[kind] += 1
            self.seen[kind].add(pid)
            mem = proc_memory_kb(pid)
            if mem:
                peak = max(mem.get("VmHWM", 0), self.memory.get(pid, {}).get("hwm_kb", 0))
                self.memory[pid] = {"kind": kind, "rss_kb": mem.get("VmRSS", 0), "hwm_kb": peak}
        for kind, count in now.items():
            self.most_at_once[kind] = max(self.most_at_once[kind], count)

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()


def _shells(scene: Scene, n: int, component: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Start n shells, release them at once, end them; each one's timings in ms."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHELL, component],
            env=env,
            cwd=scene.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a scale shell died before the barrier")
        for proc in procs:  # the release: as close to "at once" as one writer can make it
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for proc in procs]  # type: ignore[union-attr]
        if component.startswith(TRACKED) and not all(r["recorded"] for r in results):
            raise RuntimeError(f"{component}: a shell's start() recorded nothing")
        for proc in procs:
            proc.communicate("\n", timeout=WAIT_SECONDS)
            if proc.returncode != 0:
                raise RuntimeError(f"{component}: a scale shell exited with {proc.returncode}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _warm_up(scene: Scene) -> None:
    """One shell first, as a user has had before: the config cache and the spool exist. Then no agent."""
    _shells(scene, 1, "scale-warmup", scene.env)
    wait_until(lambda: scene.depth() == 0, timeout=WAIT_SECONDS, poll=0.05, what="the warm-up delivered")
    scene.stop_agents()
    probe = Sampler(scene)
    wait_until(
        lambda: not any(probe.kind(c) for c in processes_under(scene.root, in_cmdline_only=True).values()),
        timeout=WAIT_SECONDS,
        poll=0.05,
        what="the warm-up's agent and server gone",
    )


def _agents_logged(scene: Scene) -> set[str]:
    """Pids of every agent that ever logged for this spool (each logs at least its start or its exit)."""
    log = agent_log_path(scene.spool_path)
    return set(re.findall(r"agent\[(\d+)\]", log.read_text())) if log.exists() else set()


def measure(scene: Scene, n: int) -> dict[str, Any]:
    """One round of n session-buddy shells (no agent yet), and n noop shells as the baseline."""
    _warm_up(scene)
    agents_before = _agents_logged(scene)
    noop = _shells(scene, n, f"scale-noop-{n}", {**scene.env, "ONEIRIC_SESSION_PROVIDER": "noop"})
    sampler = Sampler(scene)
    sampler.start()
    try:
        component = f"{TRACKED}{n}"
        tracked = _shells(scene, n, component, scene.env)
        wait_until(
            lambda: scene.depth() == 0 and recorded(scene.db, component)["ended"] >= n,
            timeout=WAIT_SECONDS,
            poll=0.05,
            what=f"{n} sessions delivered",
        )
        time.sleep(3 * SAMPLE_SECONDS)  # let the sampler see the settled processes
    finally:
        sampler.stop()
    check = recorded(scene.db, component)
    started = _agents_logged(scene) - agents_before
    memory = {kind: [m for m in sampler.memory.values() if m["kind"] == kind] for kind in ("agent", "server")}
    return {
        "noop_start_ms": [r["start_ms"] for r in noop],
        "start_ms": [r["start_ms"] for r in tracked],
        "resolve_ms": [r["resolve_ms"] for r in tracked],
        "call_ms": [r["call_ms"] for r in tracked],
        "recorded": check,
        "exactly_once": check == {"rows": n, "distinct_event_ids": n, "ended": n},
        "dead_letters": scene.dead(),
        "server_processes": {
            "at_once": sampler.most_at_once["server"],
            "in_all": len(sampler.seen["server"]),
        },
        # Short-lived agents (a second one exits at once) can slip between samples: the log has them all.
        "agent_processes": {"at_once": sampler.most_at_once["agent"], "started": len(started)},
        "memory": memory,
    }


def new_scene(root: Path) -> Scene:
    root.mkdir(parents=True)
    return Scene(root, agent__idle_exit_seconds="120")
