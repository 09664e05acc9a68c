"""Reading the spool's header never drops SQLite's locks: a descriptor of a file a connection of
ours has open is closed only after the last such connection (spool/descriptors.py).

Where another process's close would take the WAL away (SQLite 3.40, Python 3.11's here: checked
by reverting the fixes, which fails these tests), an open-and-close of the file beside our
connection shows it; a newer SQLite (Python 3.14's in the sid root) does not delete the WAL then,
and these tests only check there that nothing else breaks."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool, descriptors
from oneiric_session.tracking.destination import Destination

DEST = Destination(command="srv")


def other_process_opens_and_closes(path: Path) -> None:
    """Another process's last use of the spool: when SQLite's close finds no other user (it gets
    the exclusive lock), it checkpoints and deletes the WAL."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        " c.execute('SELECT 1 FROM meta').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)


def open_spool(path: Path) -> Spool:
    sp = Spool(path)
    assert sp.append_start("a", DEST, {"event_id": "id-a"}, pid=1, pid_start_time=2, boot_id="b")
    return sp


@pytest.mark.parametrize("reader", ["read_header", "a second connection closed"])
def test_our_reads_of_the_file_leave_sqlites_locks_in_place(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "spool.sqlite3"
    sp = open_spool(path)
    if reader == "read_header":
        _, header = descriptors.read_header(path)
        assert header.startswith(b"SQLite format 3\x00")
    else:
        other = Spool(path)
        assert [e.handle for e in other.list_pending()] == ["a"]
        other.close()
    wal = Path(f"{path}-wal")
    assert wal.exists()
    other_process_opens_and_closes(path)
    # Still a user here: the other process must not have taken the WAL away from under it.
    assert wal.exists()
    assert [e.handle for e in sp.list_pending()] == ["a"]
    sp.close()


def test_the_descriptor_is_closed_with_the_last_holder(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    first, second = open_spool(path), Spool(path)
    second.open()
    file_id = descriptors.read_header(path)[0]
    assert descriptors.header_of(file_id) is not None
    first.close()
    assert descriptors.header_of(file_id) is not None
    second.close()
    assert descriptors.header_of(file_id) is None
    sqlite3.connect(path).close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_opening_and_closing_beside_an_open_spool_keeps_no_descriptor(tmp_path: Path) -> None:
    """A second connection to a file the process holds adds no descriptor that outlives it."""
    path = tmp_path / "spool.sqlite3"
    keeper = open_spool(path)

    def cycle() -> None:
        with Spool(path) as writer:
            writer.meta_get("x")
        with Spool(path, read_only=True) as reader:
            reader.meta_get("x")

    cycle()  # (what the first of them opens for good, e.g. the directory lock's descriptor)
    before = open_descriptors()
    for _ in range(50):
        cycle()
    assert open_descriptors() == before
    keeper.close()


@pytest.mark.parametrize("when", ["before SQLite opens it", "after it was held"])
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_the_file_replaced_while_a_connection_opens_keeps_its_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, read_only: bool
) -> None:
    """Another process puts another spool in place while we open ours: the connection ends up on
    the file at the path, holding that very file, so a read of its header by another connection of
    this process leaves its locks (another user's close leaves its WAL)."""
    import oneiric_session.spool.connection as spool_connection
    import oneiric_session.spool.opening as spool_opening

    path, other = tmp_path / "spool.sqlite3", tmp_path / "other.sqlite3"
    with Spool(other) as sp:
        sp.meta_set("which", "other")
    with Spool(path) as sp:
        sp.meta_set("which", "ours")

    def swap() -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{other}{suffix}"):
                os.replace(f"{other}{suffix}", f"{path}{suffix}")

    if when == "before SQLite opens it":
        real_connect = spool_connection.connect if not read_only else spool_opening.connect

        def replaced_first(at: Path, timeout: float) -> sqlite3.Connection:
            monkeypatch.setattr(spool_connection, "connect", real_connect)
            monkeypatch.setattr(spool_opening, "connect", real_connect)
            swap()
            return real_connect(at, timeout)

        monkeypatch.setattr(spool_connection, "connect", replaced_first)
        monkeypatch.setattr(spool_opening, "connect", replaced_first)
    else:
        module = spool_opening if read_only else spool_connection
        real_hold = module.hold

        def hold_then_replaced(at: Path) -> object:
            monkeypatch.setattr(module, "hold", real_hold)
            held = real_hold(at)
            swap()
            return held

        monkeypatch.setattr(module, "hold", hold_then_replaced)
    sp = Spool(path, read_only=read_only)
    assert sp.meta_get("which") == "other"
    assert sp._held == sp._file_id == descriptors.read_header(path)[0]
    assert Path(f"{path}-wal").exists()
    other_process_opens_and_closes(path)
    assert Path(f"{path}-wal").exists()
    sp.close()
    assert descriptors.header_of(descriptors.read_header(path)[0]) is None  # nothing held after


def test_following_a_spool_replaced_by_another_process_leaves_the_new_ones_locks(tmp_path: Path) -> None:
    """Two connections of this process follow the path to a fresh spool another process made after
    moving theirs aside: leaving the old file closes no descriptor of the new one."""
    path = tmp_path / "spool.sqlite3"
    first, second = open_spool(path), Spool(path)
    second.open()
    code = (
        "import os, sys; from pathlib import Path; from oneiric_session.spool import Spool\n"
        "p = sys.argv[1]\n"
        "os.replace(p, p + '.aside'); os.replace(p + '-wal', p + '.aside-wal'); os.unlink(p + '-shm')\n"
        "s = Spool(Path(p)); s.meta_set('which', 'new')\n"
        "print('ready', flush=True); sys.stdin.readline(); s.close()\n"
    )
    maker = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert maker.stdout is not None and maker.stdout.readline() == "ready\n"
        assert second.meta_get("which") == "new"
        wal = Path(f"{path}-wal")
        assert first.meta_get("which") == "new"  # the other connection follows too
        assert maker.stdin is not None
        maker.stdin.write("\n")
        maker.stdin.close()
        assert maker.wait(timeout=60) == 0
    finally:
        maker.kill()
    assert wal.exists()  # its maker's close found us still there
    first.close()
    second.close()


def test_a_read_only_connection_reads_a_spool_not_in_wal_mode_again_and_again(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with open_spool(path):
        pass
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = DELETE")
    raw.close()
    reader = Spool(path, read_only=True)
    for _ in range(3):
        assert [e.handle for e in reader.list_pending()] == ["a"]
    reader.close()


def test_a_connection_being_opened_keeps_its_locks_when_another_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is held before SQLite opens it: another connection of this process closing while
    this one is being set up closes no descriptor of the file."""
    import oneiric_session.spool.connection as spool_connection

    path = tmp_path / "spool.sqlite3"
    first = open_spool(path)
    real_prepare = spool_connection.prepare_writable

    def closing_the_other(*args: object, **kwargs: object) -> None:
        real_prepare(*args, **kwargs)  # type: ignore[arg-type]
        first.close()  # the last holder but the one being opened

    monkeypatch.setattr(spool_connection, "prepare_writable", closing_the_other)
    second = Spool(path)
    second.open()
    monkeypatch.setattr(spool_connection, "prepare_writable", real_prepare)
    other_process_opens_and_closes(path)
    assert Path(f"{path}-wal").exists()
    assert [e.handle for e in second.list_pending()] == ["a"]
    second.close()


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_a_file_deleted_while_a_connection_opens_is_not_made_by_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_only: bool
) -> None:
    """SQLite never creates the file: a writable connection makes a private one itself, under the
    directory lock; a read-only one makes none."""
    import oneiric_session.spool.connection as spool_connection
    import oneiric_session.spool.opening as spool_opening

    path = tmp_path / "spool.sqlite3"
    with open_spool(path):
        pass
    real_connect = spool_opening.connect

    def deleted_first(at: Path, timeout: float) -> sqlite3.Connection:
        monkeypatch.setattr(spool_opening, "connect", real_connect)
        monkeypatch.setattr(spool_connection, "connect", real_connect)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        return real_connect(at, timeout)

    monkeypatch.setattr(spool_opening, "connect", deleted_first)
    monkeypatch.setattr(spool_connection, "connect", deleted_first)
    old_umask = os.umask(0o022)
    try:
        sp = Spool(path, read_only=read_only)
        if read_only:
            with pytest.raises(SpoolError):
                sp.open()
            assert not path.exists()
        else:
            assert sp.list_pending() == []
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        sp.close()
    finally:
        os.umask(old_umask)


def test_another_programs_database_put_in_place_while_opening_is_moved_aside_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oneiric_session.spool.connection as spool_connection
    import oneiric_session.spool.opening as spool_opening

    path, foreign = tmp_path / "spool.sqlite3", tmp_path / "notes.sqlite3"
    with open_spool(path):
        pass
    raw = sqlite3.connect(foreign)
    raw.execute("CREATE TABLE notes (body TEXT)")
    raw.commit()
    raw.close()
    real_connect = spool_opening.connect

    def replaced_first(at: Path, timeout: float) -> sqlite3.Connection:
        monkeypatch.setattr(spool_opening, "connect", real_connect)
        monkeypatch.setattr(spool_connection, "connect", real_connect)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        os.replace(foreign, path)
        return real_connect(at, timeout)

    monkeypatch.setattr(spool_opening, "connect", replaced_first)
    monkeypatch.setattr(spool_connection, "connect", replaced_first)
    sp = Spool(path)
    assert sp.list_pending() == []  # the first use already works, on a fresh spool
    assert len([p for p in tmp_path.glob("spool.sqlite3.corrupt-*") if not p.name.endswith("-wal")]) == 1
    sp.close()
