"""What every benchmark section shares: summaries of samples, /proc readings, and leaving nothing behind.

Each section runs its processes under one scratch root (HOME and XDG dirs inside it, via
tests/support/delivery.Scene), so "ours" is well defined: a process whose environment or
command line names that root. `reap(root)` ends exactly those, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout: tests.support, the one import root of the test helpers

from tests.support.delivery import Scene, process_gone, wait_until  # noqa: E402  (on the path only now)

__all__ = [
    "REPO",
    "Scene",
    "percentile",
    "proc_memory_kb",
    "processes_under",
    "reap",
    "scratch",
    "summary",
    "wait_until",
]

# How long a process gets after SIGTERM before SIGKILL when a section cleans up.
TERM_GRACE_SECONDS = 5.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); enough for a dozen to a few hundred samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: Sequence[float], digits: int = 2) -> dict[str, float | int]:
    """Median and spread of repeated samples: p10-p90, and p99 for per-call costs."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "p10": round(percentile(values, 0.10), digits),
        "p90": round(percentile(values, 0.90), digits),
        "p99": round(percentile(values, 0.99), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes_under(root: Path, *, in_cmdline_only: bool = False) -> dict[int, str]:
    """Live processes (not ours) whose command line, or environment, names `root`: pid -> command line."""
    needle = str(root).encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmdline = _read(f"/proc/{entry}/cmdline")
        ours = needle in cmdline or (not in_cmdline_only and needle in _read(f"/proc/{entry}/environ"))
        if ours and not process_gone(int(entry)):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in kB; empty once it is gone."""
    out = {}
    for line in _read(f"/proc/{pid}/status").decode(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def reap(root: Path) -> list[int]:
    """SIGTERM every process under `root`, then SIGKILL what is left after a grace period; their pids."""
    pids = list(processes_under(root))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_SECONDS
    while time.monotonic() < deadline and not all(process_gone(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if not process_gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


@contextlib.contextmanager
def scratch(parent: Path, name: str) -> Iterator[Path]:
    """A fresh directory for one section; every process started under it is ended on the way out."""
    root = parent / name
    root.mkdir(parents=True)
    try:
        yield root
    finally:
        reap(root)
