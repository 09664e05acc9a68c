"""The shell's outbox: one durable file per event, taken into the spool once, whatever is killed when.

Real files, real processes (a shell killed right after start() returned, an agent), real other users.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oneiric_session.agent.status import failing_destination, publish_destinations
from oneiric_session.agent.watch import SessionWatch
from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.spool.outbox_reader import STALE_UNFINISHED_SECONDS
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until

DESTINATION = Destination(command="srv", args=("-m", "srv"))
CAPS = (10_000, 64 * 1024 * 1024, 30 * 86400.0)


def _start(outbox: Outbox, handle: str, *, pid: int | None = None, component: str = "demo") -> None:
    event = events.build_start_event(
        component_name=component, shell_type="TestShell", metadata=None, limits=Limits()
    )
    assert outbox.append_start(handle, DESTINATION, event, pid=pid, pid_start_time=None, boot_id=None)


def _end(outbox: Outbox, handle: str) -> bool:
    event = events.build_end_event(
        session_id=handle, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )
    return outbox.append_end(handle, DESTINATION, event)


def test_a_record_is_one_private_file_whole_on_disk_before_the_call_returns(tmp_path: Path) -> None:
    spool_path = tmp_path / "state" / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-a")
    directory = Path(outbox_dir(spool_path))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    (record,) = directory.iterdir()
    assert record.name == "local-a.start" and stat.S_IMODE(record.stat().st_mode) == 0o600
    text = record.read_text()
    assert text.endswith("\n") and json.loads(text)["handle"] == "local-a"
    assert not spool_path.exists()  # a shell never opens the database
    assert _end(outbox, "local-a") and not _end(outbox, "local-a")  # one end per session
    assert sorted(p.name for p in directory.iterdir()) == ["local-a.end", "local-a.start"]


def test_a_token_in_an_event_never_reaches_the_disk(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    event = {
        "event_id": "e1",
        "event_type": "session_start",
        "token": "tok-secret",
        "metadata": {"Token": "x"},
    }
    assert Outbox(spool_path, caps=CAPS).append_start(
        "local-t", DESTINATION, event, pid=None, pid_start_time=None, boot_id=None
    )
    (record,) = Path(outbox_dir(spool_path)).iterdir()
    assert b"tok-secret" not in record.read_bytes()


def test_records_are_taken_in_oldest_first_and_their_files_released_once_flushed(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    for n in range(3):
        _start(outbox, f"local-{n}", component=f"c{n}")
    _end(outbox, "local-1")
    directory = Path(outbox_dir(spool_path))
    with Spool(spool_path) as spool:
        assert spool.stats().depth == 4 and spool.stats().outbox == 4  # counted while still in the outbox
        assert [r.row_id for r in spool.list_pending()] == [0, 0, 0, 0]
        assert spool.take_in() == 4
        rows = spool.list_pending()
        assert [(r.kind, r.payload.get("component_name")) for r in rows[:3]] == [
            ("start", "c0"),
            ("start", "c1"),
            ("start", "c2"),
        ]
        assert rows[3].kind == "end" and rows[3].handle == "local-1"
        assert len(rows) == 4 and spool.stats().outbox == 0  # taken in: counted once, in the spool
        assert len(list(directory.iterdir())) == 4  # the files wait for the flush
        assert spool.take_in() == 0
        assert spool.release_taken() == 4
        assert list(directory.iterdir()) == []
        assert spool.release_taken() == 0 and len(spool.list_pending()) == 4


def test_a_record_taken_in_but_not_released_is_never_taken_twice(tmp_path: Path) -> None:
    """An agent killed between taking in and releasing: its successor finds the files, and the row
    was meanwhile delivered and acknowledged; the record is not appended again."""
    spool_path = tmp_path / "spool.sqlite3"
    _start(Outbox(spool_path, caps=CAPS), "local-x")
    record = Path(outbox_dir(spool_path)) / "local-x.start"
    with Spool(spool_path) as spool:
        assert spool.take_in() == 1
        (row,) = spool.list_pending()
        assert spool.ack_start(row, "server-1")
    assert record.exists()
    with Spool(spool_path) as successor:
        assert successor.take_in() == 0  # seen, known, not appended again
        assert successor.list_pending() == []
        assert successor.release_taken() == 1 and not record.exists()
        (session,) = successor.open_sessions()
        assert session.server_session_id == "server-1"


def test_an_unfinished_record_waits_then_goes_once_a_minute_old(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    directory = Path(outbox_dir(spool_path))
    Outbox(spool_path, caps=CAPS).writable()
    torn = directory / "local-torn.start"
    torn.write_text('{"format": 1, "kind": "start"')  # no final newline: still being written
    os.chmod(torn, 0o600)
    with Spool(spool_path) as spool:
        assert spool.take_in() == 0 and torn.exists()
        old = time.time() - STALE_UNFINISHED_SECONDS - 1
        os.utime(torn, (old, old))
        assert spool.take_in() == 0 and not torn.exists()
        assert spool.stats().depth == 0


def test_an_end_waiting_in_the_outbox_is_not_taken_for_a_dead_shell(tmp_path: Path) -> None:
    """The shell wrote its end and exited before the agent looked: its end, not "abnormal"."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(child.stdout)
    _start(outbox, "local-gone", pid=dead_pid)
    with Spool(spool_path) as spool:
        assert spool.take_in() == 1
        assert _end(outbox, "local-gone")
        watch = SessionWatch(spool, wall=time.time, on_end=lambda: None)
        (still_open,) = watch.check()
        assert still_open.handle == "local-gone"
        assert spool.take_in() == 1
        assert spool.release_taken() == 2
        assert watch.check() == []
        (_, end) = spool.list_pending()
        assert end.payload["metadata"]["exit_reason"] == "user_exit"


@pytest.mark.parametrize("how", ["outbox writable by others", "record owned by another user"])
def test_a_record_another_user_could_have_written_is_never_taken_in(
    tmp_path: Path, other_user: pwd.struct_passwd, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-planted")
    directory = Path(outbox_dir(spool_path))
    if how == "outbox writable by others":
        os.chmod(directory, 0o777)
    else:
        os.chown(directory / "local-planted.start", other_user.pw_uid, other_user.pw_gid)
    with Spool(spool_path) as spool:
        if how == "outbox writable by others":
            with pytest.raises(SpoolError, match=r"outbox refused: .* writable by other users"):
                spool.take_in()
        else:
            assert spool.take_in() == 0
            assert "belongs to another user" in caplog.text
        assert spool.pending_destinations() == []  # no launch line of theirs was taken
    assert (directory / "local-planted.start").exists()  # left where it is, for a person to look at
    if how == "outbox writable by others":
        assert not outbox.writable()  # and no shell writes there any more


def test_the_exit_notice_reads_no_database(tmp_path: Path) -> None:
    """A shell leaving asks whether its destination fails: the published status and the outbox only."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-n")
    assert failing_destination(spool_path, DESTINATION.key) == (0, None)
    with Spool(spool_path) as spool:
        spool.take_in()
        spool.release_taken()  # (at once while a destination fails: agent.core.take_in)
    from oneiric_session.agent.status import DestinationStatus

    failing = DestinationStatus(target="srv", last_error="server command not found", waiting=1)
    publish_destinations(spool_path, {DESTINATION.key: failing}, None)
    assert _end(outbox, "local-n")
    assert failing_destination(spool_path, DESTINATION.key) == (2, "server command not found")
    probe = (
        "import sys\n"
        "from oneiric_session.agent.status import failing_destination\n"
        f"print(failing_destination({str(spool_path)!r}, {DESTINATION.key!r}), 'sqlite3' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split(")")[-1].strip() == "False"


def test_a_shell_killed_right_after_its_start_returned_is_delivered(scene: Scene) -> None:
    """kill -9 the moment start() returned, before any agent took the record in: the session arrives."""
    script = (
        "import os, signal\n"
        "from oneiric_session.tracking.registry import resolve_tracker\n"
        "t = resolve_tracker()\n"
        "assert t.start(component_name='killed', shell_type='TestShell')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**scene.env, "ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS": "30"}
    shell = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert shell.returncode == -signal.SIGKILL, shell.stderr

    def ended() -> list[dict[str, object]]:
        sessions = scene.sessions()
        return sessions if sessions and sessions[0]["status"] == "ended" else []

    (session,) = wait_until(ended, timeout=WAIT_SECONDS, what="the killed shell's session, ended")
    assert session["component_name"] == "killed" and session["exit_reason"] == "abnormal"
    assert not list(Path(outbox_dir(scene.spool_path)).iterdir())


def test_a_spool_moved_to_another_directory_keeps_its_own_outbox(tmp_path: Path) -> None:
    """The outbox follows the spool's real path: a symlinked spool path writes the same outbox."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    _start(Outbox(link / "spool.sqlite3", caps=CAPS), "local-l")
    assert (real / "spool.sqlite3.outbox" / "local-l.start").exists()
    shutil.rmtree(real)
