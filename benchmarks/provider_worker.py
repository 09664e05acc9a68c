"""A shell's process for the delivery benchmarks: the real `session-buddy` provider, timed from inside.

    python benchmarks/provider_worker.py [--warm N] [--batch K] [--component NAME]

Runs in the environment it is given (a Scene's: settings, HOME and XDG dirs) and prints one
JSON object (seconds):
- first:  append-to-answer of one session (cold when the caller made sure no agent runs);
- warm:   N more append-to-answer samples (the agent and its server connection are up);
- batch:  K sessions (start + end) appended back to back, then the time until the agent has
  delivered every one of them ("appended" = the appends alone, "delivered" = to the last answer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from measure_delivery import append_to_answer

from oneiric_session.spool import Spool
from oneiric_session.tracking.registry import resolve_tracker
from oneiric_session.tracking.tracker import Tracker

# Polling the spool competes with the agent for 2 cores: 1 ms keeps that small at ~ms resolution.
POLL_SECONDS = 0.001
WAIT_SECONDS = 120.0


def drained(spool: Spool) -> bool:
    return spool.stats().depth == 0 and not spool.open_sessions()


def wait_drained(spool: Spool) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not drained(spool):
        if time.monotonic() > deadline:
            raise SystemExit(f"the spool did not drain within {WAIT_SECONDS:g} s: {spool.stats()}")
        time.sleep(POLL_SECONDS)


def batch(tracker: Tracker, spool: Spool, sessions: int, component: str) -> dict[str, float]:
    wait_drained(spool)
    began = time.perf_counter()
    for _ in range(sessions):
        handle = tracker.start(component_name=component, shell_type="BenchShell")
        if handle is None or not tracker.end(handle):
            raise SystemExit("a session was not spooled")
    appended = time.perf_counter() - began
    wait_drained(spool)
    return {"appended": appended, "delivered": time.perf_counter() - began}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--component", default="bench")
    args = parser.parse_args()
    tracker = resolve_tracker()
    if getattr(tracker, "provider", None) != "session-buddy":
        raise SystemExit(f"expected the session-buddy provider, got {tracker!r}")
    spool = Spool(tracker.spool_path)  # type: ignore[attr-defined]
    out: dict[str, object] = {}
    try:
        if not args.batch:
            out["first"] = append_to_answer(tracker, spool, args.component, POLL_SECONDS)
            out["warm"] = [
                append_to_answer(tracker, spool, args.component, POLL_SECONDS) for _ in range(args.warm)
            ]
        if args.batch:
            out["batch"] = batch(tracker, spool, args.batch, args.component)
        wait_drained(spool)
    finally:
        tracker.close()
        spool.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
