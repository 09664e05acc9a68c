"""Hardening (issue 13), item 17 (the bounds part): hostile metadata in start(), the bundled server's
metadata cap and its deleted database, Ctrl-C during the exit hook's wait.

Real shells (a Python process starting sessions through the drop-in emitter) run with a timeout; the
spool they write is read back from disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.faults import isolated_env

from oneiric_session.spool import Spool

SHELL_TIMEOUT_SECONDS = 60
# A start must come back well before the hostile object would have let it (its repr sleeps 30 s).
START_SECONDS = 10

HOSTILE_SHELL = textwrap.dedent(
    """
    import itertools, sys, time
    from collections.abc import Mapping
    from oneiric_session.providers.session_buddy import create

    class ItemsRaise(Mapping):
        def __getitem__(self, key): return 1
        def __len__(self): return 1
        def __iter__(self): return iter(["a"])
        def items(self): raise RuntimeError("items() is broken")

    class SameKeyForever(Mapping):
        def __getitem__(self, key): return 1
        def __len__(self): return 1
        def __iter__(self): return iter(["a"])
        def items(self): return (("same", 1) for _ in itertools.count())

    class SleepyRepr:
        def __repr__(self):
            time.sleep(30)
            return "late"

    tracker = create(None)
    for name, metadata in [
        ("raises", ItemsRaise()),
        ("forever", SameKeyForever()),
        ("sleepy", {"slow": SleepyRepr(), "kept": "yes"}),
    ]:
        started = time.monotonic()
        handle = tracker.start(component_name=name, shell_type="ProbeShell", metadata=metadata)
        print(name, handle, round(time.monotonic() - started, 3), flush=True)
    """
)


@pytest.mark.hardening(
    item=17,
    fault="start() with a mapping whose items() raises, one that yields the same key forever, "
    "and a value whose __repr__ sleeps 30 s",
    outcome="each start is recorded at once with what could be read safely (marked `_truncated`); "
    "reading a caller's objects is bounded in time and count",
)
def test_hostile_mappings_in_start_are_recorded_at_once(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **isolated_env(tmp_path),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path),
        "ONEIRIC_SESSION_SPOOL": json.dumps({"path": str(spool_path)}),
        # No server: the rows stay in the spool to be read; the agent gives up at once.
        "ONEIRIC_SESSION_SERVER__COMMAND": str(tmp_path / "no-such-server"),
        "ONEIRIC_SESSION_AGENT": json.dumps({"idle_exit_seconds": 1}),
    }
    result = subprocess.run(
        [sys.executable, "-c", HOSTILE_SHELL],
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_SECONDS,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == ["raises", "forever", "sleepy"], result.stdout + result.stderr
    for name, handle, seconds in lines:
        assert handle.startswith("local-"), (name, result.stderr)
        assert float(seconds) < START_SECONDS, (name, seconds)
    with Spool(spool_path) as spool:
        starts = {row.payload["component_name"]: row.payload for row in spool.list_pending()}
    assert starts["raises"]["metadata"].get("_truncated") is True
    assert starts["forever"]["metadata"]["same"] == 1 and starts["forever"]["metadata"]["_truncated"]
    assert starts["sleepy"]["metadata"]["kept"] == "yes"
    assert starts["sleepy"]["metadata"]["slow"] == "<SleepyRepr object>"
