"""Measure the shell-side cost of start()/end() and the append-to-answer latency, cold and warm.

Runs the real `session-buddy` provider against the bundled server in a scratch directory
(HOME and XDG dirs inside it). "Cold": no agent runs, so the append spawns one, which starts
the server and does the MCP handshake. "Warm": the agent and its server connection are up.
Latency = from just before `start()` to the moment the spool maps the handle to the server's
session id (the agent's acknowledgement right after the answer), polled every 0.2 ms.

    python scripts/measure_delivery.py [--warm N] [--calls N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oneiric_session.spool import Spool
    from oneiric_session.tracking.tracker import Tracker


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.2f} ms, p99 {_percentile(values, 0.99) * 1000:.2f} ms"


def delivered(spool: Spool, handle: str) -> bool:
    """True once the agent mapped `handle` to the server's session id (right after the answer)."""
    return any(s.handle == handle and s.server_session_id for s in spool.open_sessions())


def append_to_answer(
    tracker: Tracker, spool: Spool, component: str = "measure", poll_seconds: float = 0.0002
) -> float:
    """Seconds from just before `start()` to the server's answer being acknowledged in the spool."""
    began = time.perf_counter()
    handle = tracker.start(component_name=component, shell_type="MeasureShell")
    assert handle is not None
    while not delivered(spool, handle):
        time.sleep(poll_seconds)
        if time.perf_counter() - began > 60:
            raise SystemExit("no delivery within 60 s")
    took = time.perf_counter() - began
    tracker.end(handle)
    return took


def call_costs(tracker: Tracker, calls: int, component: str = "measure") -> tuple[list[float], list[float]]:
    """Seconds each `start()` and each `end()` takes in the calling (shell) process."""
    starts, ends = [], []
    for _ in range(calls):
        began = time.perf_counter()
        handle = tracker.start(component_name=component, shell_type="MeasureShell")
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        tracker.end(handle or "")
        ends.append(time.perf_counter() - began)
    return starts, ends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=30, help="warm deliveries to time")
    parser.add_argument("--calls", type=int, default=200, help="start()/end() pairs to time")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="oneiric-measure-"))
    (root / "run").mkdir(mode=0o700)
    (root / "settings").mkdir()
    db = str(root / "server.sqlite3")
    os.environ.update(
        {
            "HOME": str(root / "home"),
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "ONEIRIC_SESSION_SETTINGS_DIR": str(root / "settings"),
            "ONEIRIC_SESSION_SPOOL__PATH": str(root / "state" / "spool.sqlite3"),
            "ONEIRIC_SESSION_SERVER__COMMAND": sys.executable,
            "ONEIRIC_SESSION_SERVER__ARGS": json.dumps(["-m", "oneiric_session", "serve", "--db", db]),
            "ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS": "5",
        }
    )
    from oneiric_session.spool import Spool
    from oneiric_session.tracking.registry import resolve_tracker
    from oneiric_session.wakeup import agent_holds_lock

    tracker = resolve_tracker()
    spool = Spool(root / "state" / "spool.sqlite3")

    cold = append_to_answer(tracker, spool)
    warm = [append_to_answer(tracker, spool) for _ in range(args.warm)]
    starts, ends = call_costs(tracker, args.calls)
    print(f"cold append-to-answer: {cold * 1000:.0f} ms (agent spawn + server start + handshake + call)")
    print(f"warm append-to-answer ({args.warm}): {_ms(warm)}")
    print(f"start() in the shell ({args.calls}): {_ms(starts)}")
    print(f"end() in the shell ({args.calls}): {_ms(ends)}")
    deadline = time.monotonic() + 60
    while spool.stats().depth and time.monotonic() < deadline:
        time.sleep(0.05)
    tracker.close()
    print(f"left in spool: {spool.stats().depth}")
    spool.close()
    deadline = time.monotonic() + 60
    while agent_holds_lock(spool.path) and time.monotonic() < deadline:
        time.sleep(0.1)  # the agent exits after its idle time; then the scratch dir can go
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
