"""Hardening (issue 13), item 17 (the bounds part): hostile metadata in start(), the bundled server's
metadata cap and its deleted database, Ctrl-C during the exit hook's wait.

Real shells (a Python process starting sessions through the drop-in emitter) run with a timeout; the
spool they write is read back from disk.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oneiric_session.spool import Spool
from tests.support.delivery import stop_agent
from tests.support.faults import isolated_env
from tests.support.server_process import connect, start_event
from tests.support.signals import as_from_a_terminal

SHELL_TIMEOUT_SECONDS = 60
# A start must come back well before the hostile object would have let it (its repr sleeps 30 s).
START_SECONDS = 10

HOSTILE_SHELL = textwrap.dedent(
    """
    import itertools, sys, time
    from collections.abc import Mapping
    from oneiric_session.tracking.providers.session_buddy import create

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
            time.sleep(30)  # sleep-ok: the hostile repr that start() must not wait for
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
        # No server: the rows stay in the spool to be read (the agent retries; stopped below).
        "ONEIRIC_SESSION_SERVER__COMMAND": str(tmp_path / "no-such-server"),
        "ONEIRIC_SESSION_AGENT": json.dumps({"idle_exit_seconds": 1}),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-c", HOSTILE_SHELL],
            env=env,
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT_SECONDS,
            cwd=tmp_path,
        )
        _check_hostile(result, spool_path)
    finally:
        stop_agent(spool_path)


def _check_hostile(result: subprocess.CompletedProcess[str], spool_path: Path) -> None:
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == ["raises", "forever", "sleepy"], result.stdout + result.stderr
    for name, handle, seconds in lines:
        assert handle.startswith("local-"), (name, result.stderr)
        assert float(seconds) < START_SECONDS, (name, seconds)
    with Spool(spool_path) as spool:
        # Only the starts: the shell exited without ends, so the agent may already have spooled
        # each session's "abnormal" end (it watches the shell's pid).
        pending = spool.list_pending()
        starts = {row.payload["component_name"]: row.payload for row in pending if row.kind == "start"}
    assert starts["raises"]["metadata"].get("_truncated") is True
    assert starts["forever"]["metadata"]["same"] == 1 and starts["forever"]["metadata"]["_truncated"]
    assert starts["sleepy"]["metadata"]["kept"] == "yes"
    assert starts["sleepy"]["metadata"]["slow"] == "<SleepyRepr object>"


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


@pytest.mark.hardening(
    item=17,
    fault="a loopback client sends the bundled server 10 starts with 3 MiB of metadata each",
    outcome="metadata over 64 KiB is stored as a marker with its size, not whole: the database "
    "stays small and every session is recorded",
)
def test_the_bundled_server_caps_stored_metadata(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    (tmp_path / "server-home").mkdir()
    blob = "x" * (3 * 1024 * 1024)
    with connect(home=tmp_path / "server-home", db=db) as server:
        for n in range(10):
            answer = server.call("track_session_start", start_event(metadata={"blob": blob, "n": n}))
            assert answer.structured_content["status"] == "tracked"  # type: ignore[index]
    assert _db_bytes(db) < 5 * 1024 * 1024, _db_bytes(db)
    with sqlite3.connect(db) as conn:
        stored = [json.loads(row[0]) for row in conn.execute("SELECT start_metadata FROM sessions")]
    conn.close()
    assert len(stored) == 10
    assert all(meta["_truncated"] is True and meta["_bytes"] > 3 * 1024 * 1024 for meta in stored)


@pytest.mark.hardening(
    item=17,
    fault="the bundled server's database is deleted while a warm server runs, then 3 sessions start",
    outcome="the server sees the file is gone and opens a new one at the same path: the 3 sessions "
    "are in the database on disk, none acknowledged into the deleted file",
)
def test_a_deleted_server_database_is_reopened(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    (tmp_path / "server-home").mkdir()
    with connect(home=tmp_path / "server-home", db=db) as server:
        server.call("track_session_start", start_event(component_name="before"))
        for path in db.parent.glob(db.name + "*"):
            path.unlink()
        ids = []
        for n in range(3):
            answer = server.call("track_session_start", start_event(component_name=f"after{n}"))
            assert answer.structured_content["status"] == "tracked"  # type: ignore[index]
            ids.append(answer.structured_content["session_id"])  # type: ignore[index]
    assert db.exists()
    with sqlite3.connect(db) as conn:
        on_disk = {row[0] for row in conn.execute("SELECT session_id FROM sessions")}
    conn.close()
    assert set(ids) <= on_disk, (ids, on_disk)


SLOW_END_SHELL = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from oneiric_session import SessionEventEmitter

    class SlowEnd:
        provider = "slow"
        exit_wait_seconds = 60.0
        def start(self, **_): return "local-slow"
        def end(self, handle, **_):
            time.sleep(60)  # sleep-ok: the slow end that Ctrl-C interrupts
            return True
        def health(self): return True
        def close(self): pass

    emitter = SessionEventEmitter(component_name="probe", tracker=SlowEnd())
    handle = emitter.start_session("ProbeShell")
    threading.Thread(target=emitter.end_session, args=(handle,), daemon=True).start()
    # Runs before the emitter's hook (atexit is last in, first out): the test waits for this line.
    atexit.register(lambda: print("at exit", flush=True))
    """
)


def _main_thread_sleeping(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "S"


@pytest.mark.hardening(
    item=17,
    fault="Ctrl-C (SIGINT) while the exit hook waits for a session end still being recorded",
    outcome="one calm line on stderr, no KeyboardInterrupt traceback; the shell exits at once",
)
def test_ctrl_c_during_the_exit_wait_prints_one_calm_line(tmp_path: Path) -> None:
    shell = subprocess.Popen(
        [sys.executable, "-c", SLOW_END_SHELL],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **isolated_env(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=as_from_a_terminal,
    )
    try:
        assert shell.stdout is not None
        assert shell.stdout.readline().strip() == "at exit"
        deadline = time.monotonic() + SHELL_TIMEOUT_SECONDS
        while not _main_thread_sleeping(shell.pid):  # the hook is in its bounded wait
            assert time.monotonic() < deadline, "the exit hook never waited"
            time.sleep(0.01)  # sleep-ok: polling another process's state
        shell.send_signal(signal.SIGINT)
        _, err = shell.communicate(timeout=SHELL_TIMEOUT_SECONDS)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = err.splitlines()
    assert len(lines) <= 1, err
    assert all("oneiric-session: interrupted at exit" in line for line in lines), err
