"""Per-call latency of our SessionBuddyClient against the real Session-Buddy 0.23.0 over stdio.

The first start includes spawning the server, the MCP handshake and the server's database
set-up; later calls reuse the one session. The server's HOME is a scratch directory.

    eval "$(bash scripts/real-envs.sh)"
    /root/.cache/oneiric-session/dev311/bin/python scripts/measure_real_transport.py \\
        --sb-python "$SESSION_BUDDY_PYTHON" [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from oneiric_session.config.loader import SESSION_BUDDY_STDIO_CODE as SERVE
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.events import build_end_event, build_start_event
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport import SessionBuddyClient

LIMITS = Limits()


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    median = statistics.median(values)
    return f"median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


async def _timed(call: Awaitable[str]) -> tuple[str, float]:
    started = time.perf_counter()
    value = await call
    return value, time.perf_counter() - started


async def measure(sb_python: str, calls: int, home: Path) -> None:
    destination = Destination(
        command=sb_python,
        args=("-c", SERVE),
        env=(("HOME", str(home)),),
        cwd=str(home),
        tuning=Tuning(connect_seconds=120, call_seconds=120),
    )

    def start() -> dict[str, Any]:
        # The server needs a cwd it has: HOME, which it writes <cwd>/.claude/handoff into.
        return build_start_event(
            component_name="measure", shell_type="Measure", metadata=None, limits=LIMITS, report_cwd=str(home)
        )

    def end(session_id: str) -> dict[str, Any]:
        return build_end_event(
            session_id=session_id, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=LIMITS
        )

    starts: list[float] = []
    ends: list[float] = []
    async with SessionBuddyClient(destination) as client:
        session_id, first_start = await _timed(client.start_session(start()))
        _, first_end = await _timed(client.end_session(end(session_id)))
        for _ in range(calls):
            session_id, seconds = await _timed(client.start_session(start()))
            starts.append(seconds)
            _, seconds = await _timed(client.end_session(end(session_id)))
            ends.append(seconds)
    print(f"first start (spawn + handshake + server's DB set-up): {first_start:.2f} s")
    print(f"first end: {first_end * 1000:.1f} ms")
    print(f"later starts ({calls}): {_ms(starts)}")
    print(f"later ends ({calls}): {_ms(ends)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sb-python", required=True, help="Python with session-buddy==0.23.0")
    parser.add_argument("--calls", type=int, default=30, help="later start/end pairs to time")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="oneiric-measure-sb-"))
    try:
        asyncio.run(measure(args.sb_python, args.calls, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
