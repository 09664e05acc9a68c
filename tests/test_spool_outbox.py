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
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.agent.status import failing_destination, publish_destinations
from oneiric_session.agent.watch import SessionWatch
from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.spool.outbox_reader import STALE_UNFINISHED_SECONDS, read_outbox, remove_if_abandoned
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


def _rewrite(record: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(record.read_text())
    change(data)
    record.write_text(json.dumps(data) + "\n")
    os.chmod(record, 0o600)


def _rewrite_text(record: Path, change: Callable[[str], str]) -> None:
    record.write_text(change(record.read_text().rstrip("\n")) + "\n")
    os.chmod(record, 0o600)


def _as_json(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda record: _rewrite(record, change)


def _as_text(change: Callable[[str], str]) -> Callable[[Path], None]:
    return lambda record: _rewrite_text(record, change)


# Records a shell of this version never writes: hand-edited, copied, another program's.
DAMAGED = {
    "destination": _as_json(lambda r: r.update(destination="[1]")),  # JSON, not a destination
    "payload": _as_json(lambda r: r.update(payload="not json")),
    "shell": _as_json(lambda r: r["shell"].update(pid={"a": 1})),  # a type SQLite cannot store
    "pid_too_large": _as_json(lambda r: r["shell"].update(pid=2**64)),  # SQLite cannot bind it
    "args_not_text": _as_json(
        lambda r: r.update(destination=json.dumps({**json.loads(r["destination"]), "args": [[1]]}))
    ),
    "caps_infinite": _as_text(lambda t: t.replace('"caps":[10000,', '"caps":[Infinity,')),
    "time_too_large": _as_text(lambda t: t.replace('"created_at":', '"created_at":1' + "0" * 400 + ',"x":')),
    "nested_too_deep": _as_text(lambda t: t[:-1] + ',"z":' + "[" * 100_000 + "]" * 100_000 + "}"),
}


@pytest.mark.parametrize("damage", list(DAMAGED), ids=list(DAMAGED))
def test_a_damaged_record_is_left_alone_and_the_others_are_taken_in(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-bad")
    _start(outbox, "local-good")
    bad = Path(outbox_dir(spool_path)) / "local-bad.start"
    DAMAGED[damage](bad)
    assert [r.handle for r in read_outbox(spool_path)] == ["local-good"]  # `status`, `spool list`
    with Spool(spool_path) as spool:
        assert spool.take_in() == 1
        assert [s.handle for s in spool.open_sessions()] == ["local-good"]
        assert spool.take_in() == 0  # and no error at the next look either
    assert bad.exists() and "local-bad.start left where it is" in caplog.text


def test_an_end_waits_while_its_start_cannot_be_read_yet(tmp_path: Path) -> None:
    """Taken alone, the end would find no session ("no_start") and be gone for good, and the
    session would stay open once its start was read at a later look."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-s")
    assert _end(outbox, "local-s")
    start = Path(outbox_dir(spool_path)) / "local-s.start"
    whole = start.read_bytes()
    start.write_bytes(whole[:-1])  # not finished at this look (its last write still to come)
    with Spool(spool_path) as spool:
        assert spool.take_in() == 0
        spool.release_taken()
        assert sorted(p.name for p in start.parent.iterdir()) == ["local-s.end", "local-s.start"]
        start.write_bytes(whole)
        assert spool.take_in() == 2
        assert [r.kind for r in spool.list_pending()] == ["start", "end"]
        assert spool.stats().drops == {}


@pytest.mark.parametrize("start_is", ["refused", "unfinished_for_long"])
def test_an_end_whose_start_never_reads_is_not_kept_waiting(tmp_path: Path, start_is: str) -> None:
    """A start left where it is for good (not ours to read), or one that stays unfinished, keeps its
    end waiting for a while at most: then the end goes alone, counted as a loss, as before."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-s")
    assert _end(outbox, "local-s")
    directory = Path(outbox_dir(spool_path))
    if start_is == "refused":
        (directory / "local-s.start").chmod(0o602)  # as if another user could have written it
    else:
        start = directory / "local-s.start"
        start.write_bytes(start.read_bytes()[:-1])
    with Spool(spool_path) as spool:  # (a refused start too keeps its end waiting: review AG #6)
        assert spool.take_in() == 0
    _rewrite(directory / "local-s.end", lambda r: r.update(created_at=r["created_at"] - 3600))
    with Spool(spool_path) as spool:
        assert spool.take_in() == 1
        spool.release_taken()
        assert [p.name for p in directory.iterdir()] == ["local-s.start"]
        assert spool.stats().drops == {"no_start": 1}


def test_a_finished_record_is_never_deleted_as_abandoned(tmp_path: Path) -> None:
    """The agent saw the record unfinished and old, but its shell finished it just before the
    agent took its lock: it is looked at again under that lock, and kept."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-s")
    record = Path(outbox_dir(spool_path)) / "local-s.start"
    old = time.time() - STALE_UNFINISHED_SECONDS - 1
    os.utime(record, (old, old))
    assert remove_if_abandoned(str(record)) is False and record.exists()
    record.write_bytes(record.read_bytes()[:-1])
    assert remove_if_abandoned(str(record)) is False  # unfinished, but written just now: not that one
    os.utime(record, (old, old))
    assert remove_if_abandoned(str(record)) is True and not record.exists()


@pytest.mark.parametrize("deleted_as", ["unlinked", "renamed_by_nfs"])
def test_a_record_deleted_as_abandoned_before_its_shell_locked_it_is_written_again(
    tmp_path: Path, deleted_as: str
) -> None:
    """The shell stood still between creating its record and locking it (stopped, or the clock
    stepped) for longer than the agent waits: the agent deleted the empty file as abandoned. The
    shell's start() must not then report a record written into a file no longer there. (An NFS
    client keeps a file deleted while open as a hidden `.nfs…` one: still linked, not at its path.)"""
    spool_path = tmp_path / "spool.sqlite3"
    Outbox(spool_path, caps=CAPS).writable()
    stopped_before_its_lock = textwrap.dedent(
        """
        import os, sys
        from oneiric_session.spool.outbox import Outbox
        from oneiric_session.tracking.destination import Destination
        lockf, stops = os.lockf, [1]
        def paused(fd, command, length):
            if stops and stops.pop():
                print("created", flush=True)
                sys.stdin.readline()
            return lockf(fd, command, length)
        os.lockf = paused
        outbox = Outbox(sys.argv[1], caps=(10000, 1 << 26, 1e6))
        written = outbox.append_start(
            "local-stopped", Destination(command="srv"), {"event_id": "e"},
            pid=None, pid_start_time=None, boot_id=None,
        )
        print("returned", written, flush=True)
        """
    )
    shell = subprocess.Popen(
        [sys.executable, "-c", stopped_before_its_lock, str(spool_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdin is not None and shell.stdout is not None
    try:
        assert shell.stdout.readline().strip() == "created"
        record = Path(outbox_dir(spool_path)) / "local-stopped.start"
        old = time.time() - STALE_UNFINISHED_SECONDS - 1
        os.utime(record, (old, old))
        with Spool(spool_path) as spool:
            if deleted_as == "unlinked":
                assert spool.take_in() == 0 and not record.exists()  # deleted as abandoned
            else:
                record.rename(record.with_name(".nfs000000000001"))
            shell.stdin.write("\n")
            shell.stdin.flush()
            assert shell.stdout.readline().strip() == "returned True"
            assert spool.take_in() == 1
            assert [s.handle for s in spool.open_sessions()] == ["local-stopped"]
    finally:
        shell.kill()
        shell.wait(WAIT_SECONDS)


def test_a_full_spool_says_so_and_leaves_the_records_for_later(tmp_path: Path) -> None:
    """SQLite ends the whole transaction itself when the disk is full: the look fails with what
    happened (not a savepoint error), and once there is room every record is taken in."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    with Spool(spool_path) as spool:
        spool.open()
        _start(outbox, "local-small")
        event = events.build_start_event(
            component_name="demo", shell_type="TestShell", metadata=None, limits=Limits()
        )
        big = {**event, "metadata": {"blob": "x" * 200_000}}  # more than the room left
        assert outbox.append_start("local-big", DESTINATION, big, pid=None, pid_start_time=None, boot_id=None)
        with spool.reading() as conn:  # a disk with room for one more page
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(SpoolError, match="database or disk is full"):
            spool.take_in()
        with spool.reading() as conn:
            conn.execute("PRAGMA max_page_count = 1073741823")
        assert spool.take_in() == 2
        assert sorted(s.handle for s in spool.open_sessions()) == ["local-big", "local-small"]


def test_an_end_stamped_before_its_start_follows_it_all_the_same(tmp_path: Path) -> None:
    """The wall clock stepped back between a short session's start and end, both taken in at once."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    _start(outbox, "local-s")
    _end(outbox, "local-s")
    end = Path(outbox_dir(spool_path)) / "local-s.end"
    _rewrite(end, lambda r: r.update(created_at=r["created_at"] - 3600))
    with Spool(spool_path) as spool:
        assert spool.take_in() == 2
        assert [r.kind for r in spool.list_pending()] == ["start", "end"]
        assert spool.stats().drops == {}  # not a "no_start" end


def test_an_unfinished_record_its_shell_still_holds_is_never_deleted(tmp_path: Path) -> None:
    """A shell stopped while it writes (SIGSTOP, a frozen VM) holds its record's lock: however old
    the record gets, the agent leaves it; once the shell is gone it goes."""
    spool_path = tmp_path / "spool.sqlite3"
    Outbox(spool_path, caps=CAPS).writable()
    record = Path(outbox_dir(spool_path)) / "local-stopped.start"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600); "
            "os.lockf(fd, os.F_LOCK, 0); print('locked', flush=True); sys.stdin.read()",
            str(record),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        old = time.time() - STALE_UNFINISHED_SECONDS - 1
        os.utime(record, (old, old))
        with Spool(spool_path) as spool:
            assert spool.take_in() == 0 and record.exists()
            holder.communicate("", timeout=WAIT_SECONDS)  # the shell goes away
            assert spool.take_in() == 0 and not record.exists()
    finally:
        if holder.poll() is None:
            holder.kill()


@pytest.mark.parametrize("damage", ["format", "caps_infinite"])
def test_a_dead_shell_whose_end_never_reads_gets_its_abnormal_end(tmp_path: Path, damage: str) -> None:
    """An end record that is not a record (not ours, damaged) keeps no session open forever."""
    spool_path = tmp_path / "spool.sqlite3"
    outbox = Outbox(spool_path, caps=CAPS)
    probe = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead_pid = int(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)
    _start(outbox, "local-gone", pid=dead_pid)
    with Spool(spool_path) as spool:
        assert spool.take_in() == 1
        assert _end(outbox, "local-gone")
        end = Path(outbox_dir(spool_path)) / "local-gone.end"
        DAMAGED.get(damage, _as_json(lambda r: r.update(format=99)))(end)
        watch = SessionWatch(spool, wall=time.time, on_end=lambda: None)
        assert watch.check() == []
        (_, end) = spool.list_pending()
        assert end.payload["metadata"]["exit_reason"] == "abnormal"


def test_a_new_agent_replaces_a_dead_agents_published_view(scene: Scene) -> None:
    """The file a killed agent left says its destination failed: the next agent starts from nothing,
    so shells leaving do not report events waiting for a server that answers."""
    from oneiric_session.agent.status import DestinationStatus, read_destinations

    key = DESTINATION.key
    stale = DestinationStatus(
        target="srv", last_error="connection refused", consecutive_failures=3, waiting=7
    )
    scene.run_shell(1)  # an agent made the spool and delivered; its view is healthy
    scene.stop_agents()
    publish_destinations(scene.spool_path, {key: stale}, None)  # as an agent killed while failing left it
    assert failing_destination(scene.spool_path, key)[1] == "connection refused"
    agent = scene.agent()
    try:
        wait_until(lambda: key not in read_destinations(scene.spool_path), what="the view published afresh")
        assert failing_destination(scene.spool_path, key) == (0, None)
    finally:
        scene.stop_agents()
        agent.wait(WAIT_SECONDS)
