"""Several shell processes append at once while a deliverer drains: nothing lost, nothing twice."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from oneiric_session.spool import Spool
from tests.support.together import failures_together

WRITERS = 4
SESSIONS = 40

WRITER = """
import sys
from oneiric_session.tracking.destination import Destination
from oneiric_session.spool import Spool

path, name, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
sp = Spool(path)
dest = Destination(command="srv")
sys.stdin.read(1)  # start together
for n in range(sessions):
    handle = f"{name}-{n}"
    event = {"event_id": f"start-{handle}", "event_type": "session_start"}
    assert sp.append_start(handle, dest, event, pid=1, pid_start_time=None, boot_id=None)
    assert sp.append_end(handle, dest, {"session_id": handle, "event_type": "session_end"})
sp.close()
"""


def test_concurrent_writers_and_a_deliverer_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """4 processes append 40 sessions each while this process delivers them as an agent would."""
    path = tmp_path / "state" / "spool.sqlite3"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{i}", str(SESSIONS)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(WRITERS)
    ]
    for w in writers:
        assert w.stdin is not None
        w.stdin.write(b"g")
        w.stdin.close()

    delivered: list[tuple[str, str]] = []
    started: set[str] = set()
    with Spool(path) as sp:
        while True:
            running = any(w.poll() is None for w in writers)
            batch = sp.next_batch(limit=20)
            for row in batch:
                if row.kind == "start":
                    assert sp.ack_start(row, f"srv-{row.handle}")
                    started.add(row.handle)
                else:
                    assert row.handle in started  # never an end before its start
                    assert row.arguments()["session_id"] == f"srv-{row.handle}"
                    assert sp.ack_end(row)
                delivered.append((row.handle, row.kind))
            if not batch:
                if not running:
                    break
                time.sleep(0.002)  # sleep-ok: polling the spool like an idle agent
        final = sp.stats()

    for w in writers:
        assert w.wait() == 0, w.stderr.read().decode() if w.stderr else ""
    expected = {
        (f"w{i}-{n}", kind) for i in range(WRITERS) for n in range(SESSIONS) for kind in ("start", "end")
    }
    assert len(delivered) == len(expected)
    assert set(delivered) == expected
    assert (final.rows, final.depth, final.dead, final.open_sessions, final.drops) == (0, 0, 0, 0, {})


# Each process opens spool number i of ROUNDS at the same moment as the others (time.monotonic is
# one clock for all processes on Linux): the writers as the agent, `spool replay` and a second
# agent would; the readers as `status` would, once the file is there.
ROUNDS = 25
OPENER = """
import os, sys, time
from pathlib import Path
from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool

root, role, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
start, step = float(sys.argv[4]), float(sys.argv[5])
failures = []
for i in range(rounds):
    path = root / str(i) / "spool.sqlite3"
    time.sleep(max(0.0, start + i * step - time.monotonic()))  # sleep-ok: the processes' shared moment
    if role == "reader":
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)  # sleep-ok: bounded poll for another process's file
    spool = Spool(path, read_only=role == "reader", durable=role != "agent")
    try:
        spool.meta_set("opened-by", str(os.getpid())) if role != "reader" else spool.stats()
    except SpoolError as exc:
        failures.append(f"{role} {i}: {exc}")
    finally:
        spool.close()
print("\\n".join(failures))
"""


def test_processes_opening_a_new_spool_together_all_get_it(tmp_path: Path) -> None:
    """A new spool is made WAL by its first opener; others opening it at that moment wait, not fail
    (SQLite does not wait on the lock that switches a file's journal mode: it fails at once)."""
    roles = ["agent", "agent", "writer", "reader", "reader"]
    failures = failures_together(OPENER, [[str(tmp_path), role, str(ROUNDS)] for role in roles])
    assert failures == []
    for i in range(ROUNDS):
        with Spool(tmp_path / str(i) / "spool.sqlite3", read_only=True) as spool:
            assert spool.meta_get("opened-by") is not None
            assert not list((tmp_path / str(i)).glob("*.corrupt-*"))  # nothing was taken for damage
