"""Processes that act at the same moments: races between real processes, made frequent."""

from __future__ import annotations

import subprocess
import sys
import time

# Each script gets, after its own arguments, the moment to start (time.monotonic: one clock for
# every process on Linux) and the seconds between rounds; it acts at that moment and once a round
# after, and prints one line per failure.
ROUND_SECONDS = 0.08
_IMPORT_SECONDS = 1.5  # every process has imported by then, on a loaded 2-core machine


def failures_together(script: str, arguments: list[list[str]]) -> list[str]:
    """Run `script` once per entry of `arguments` (`python -c script *args START STEP`), at once;
    the failure lines they printed."""
    start = repr(time.monotonic() + _IMPORT_SECONDS)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, start, repr(ROUND_SECONDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arguments
    ]
    failures = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        failures += [line for line in out.splitlines() if line]
    return failures
