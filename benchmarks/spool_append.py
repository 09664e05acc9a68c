"""What a shell pays to make an event durable, for the two ways measured (issue 12): the SQLite
spool's append (what shells did before) and the outbox's record file (what they do now).

    python benchmarks/spool_append.py [--sessions N] [--dir DIR] [--synchronous FULL|NORMAL]

Warm: one Spool (or Outbox) per process, N sessions appended back to back (each append is one
fsync'ed transaction, or one file written, flushed, and its directory flushed). Cold: a fresh
process appending one start, as a shell does at start-up, with the import of the module shown
separately (byte code cached under a temporary PYTHONPYCACHEPREFIX, as an installed package
would have it). No agent runs: this is the write alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oneiric_session.spool import Spool
from oneiric_session.spool.outbox import Outbox
from oneiric_session.tracking.destination import Destination

COLD = {
    "sqlite": """
import sys, time
t0 = time.perf_counter()
from oneiric_session.spool.intake import Intake
from oneiric_session.tracking.destination import Destination
t1 = time.perf_counter()
sp = Intake(sys.argv[1])
event = {"event_id": sys.argv[2], "event_type": "session_start"}
sp.append_start(sys.argv[2], Destination(command="srv"), event, pid=1, pid_start_time=None, boot_id=None)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
""",
    "outbox": """
import sys, time
t0 = time.perf_counter()
from oneiric_session.spool.outbox import Outbox
from oneiric_session.tracking.destination import Destination
t1 = time.perf_counter()
box = Outbox(sys.argv[1], caps=(10000, 64 * 1024 * 1024, 86400.0))
event = {"event_id": sys.argv[2], "event_type": "session_start"}
box.append_start(sys.argv[2], Destination(command="srv"), event, pid=1, pid_start_time=None, boot_id=None)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
""",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:<22} n={len(ms):<5} median {statistics.median(ms):7.3f} ms   p99 {pct(ms, 0.99):7.3f} ms"
        f"   max {max(ms):7.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--cold", type=int, default=30, help="fresh processes for the cold figure")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the spool (default: a temp dir)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "spool.sqlite3"
        dest = Destination(command="srv", args=("-m", "oneiric_session", "serve"))
        metadata = {"component_version": "0.17.0", "adapters": [], "cwd": "/home/user/project"}
        starts, ends = [], []
        with Spool(path) as sp:
            if args.synchronous != "FULL":
                sp.open()
                sp._connection().execute(f"PRAGMA synchronous = {args.synchronous}")  # comparison only
            for n in range(args.sessions):
                handle = f"h{n}"
                event = {
                    "event_id": f"00000000-0000-4000-8000-{n:012d}",
                    "event_type": "session_start",
                    "component_name": "bench",
                    "metadata": metadata,
                }
                t0 = time.perf_counter()
                sp.append_start(handle, dest, event, pid=1, pid_start_time=None, boot_id=None)
                t1 = time.perf_counter()
                sp.append_end(
                    handle,
                    dest,
                    {
                        "session_id": handle,
                        "event_type": "session_end",
                        "metadata": {"exit_reason": "user_exit"},
                    },
                )
                t2 = time.perf_counter()
                starts.append(t1 - t0)
                ends.append(t2 - t1)
        print(f"spool on {path.parent} (synchronous={args.synchronous}), {args.sessions} sessions")
        show("append_start (warm)", starts)
        show("append_end (warm)", ends)
        starts, ends = [], []
        box = Outbox(Path(tmp) / "outboxed.sqlite3", caps=(10**9, 2**62, 86400.0))
        for n in range(args.sessions):
            handle = f"h{n}"
            event = {"event_id": f"o-{n}", "event_type": "session_start", "metadata": metadata}
            t0 = time.perf_counter()
            box.append_start(handle, dest, event, pid=1, pid_start_time=None, boot_id=None)
            t1 = time.perf_counter()
            box.append_end(handle, dest, {"session_id": handle, "event_type": "session_end"})
            starts.append(t1 - t0)
            ends.append(time.perf_counter() - t1)
        show("outbox start (warm)", starts)
        show("outbox end (warm)", ends)

        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        for way, code in COLD.items():
            imports, colds = [], []
            for n in range(-1, args.cold):  # the first run only fills the byte-code cache
                out = subprocess.run(
                    [sys.executable, "-c", code, str(path), f"cold-{way}-{n}"],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                ).stdout.split()
                if n < 0:
                    continue
                imports.append(float(out[0]))
                colds.append(float(out[1]))
            show(f"{way}: import", imports)
            show(f"{way}: append (cold)", colds)


if __name__ == "__main__":
    main()
