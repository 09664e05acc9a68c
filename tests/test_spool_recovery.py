"""A broken spool never breaks a shell: corrupt files are moved aside, the event is still written;
files are private, and the token never reaches the disk."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

import oneiric_session
from oneiric_session.common.sqlite_files import directory_lock
from oneiric_session.errors import SpoolError
from oneiric_session.spool import SCHEMA_VERSION, Spool
from oneiric_session.spool.outbox import Outbox
from oneiric_session.tracking.destination import Destination
from tests.support.users import as_user

DEST = Destination(command="srv")
LOGGER = "oneiric_session.spool"


def append(sp: Spool, handle: str, **extra: object) -> bool:
    event = {"event_id": f"id-{handle}", "event_type": "session_start", **extra}
    return sp.append_start(handle, DEST, event, pid=1, pid_start_time=2, boot_id="b")


def filled_spool(path: Path, sessions: int) -> None:
    with Spool(path) as sp:
        for n in range(sessions):
            append(sp, f"h{n}", metadata={"filler": "x" * 3000})
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()


def assert_recovered(path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None) -> None:
    """A fresh spool holds the new event, the old file sits beside it untouched, one warning said so."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with Spool(path) as sp:
        assert append(sp, "new")
        assert [e.handle for e in sp.list_pending()] == ["new"]
        moved_aside = sp.stats().moved_aside
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    aside = sorted(path.parent.glob(f"{path.name}.corrupt-*"))
    assert [p for p in aside if not p.name.endswith("-wal")] == [Path(moved_aside or "")]
    assert aside[0].name in warnings[0].getMessage()
    if content is not None:
        assert aside[0].read_bytes() == content
    with Spool(path) as again:  # and it stays healthy
        assert [e.handle for e in again.list_pending()] == ["new"]
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_garbage_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    content = os.urandom(20_000)
    path.write_bytes(content)
    assert_recovered(path, caplog, content)


def test_short_garbage_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"not a database\n")
    assert_recovered(path, caplog, b"not a database\n")


def test_truncated_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    filled_spool(path, 60)
    content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    assert_recovered(path, caplog, content)


def test_truncated_inside_the_header(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    filled_spool(path, 3)
    content = path.read_bytes()[:60]
    path.write_bytes(content)
    assert_recovered(path, caplog, content)


def test_wrong_schema_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    filled_spool(path, 2)
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    assert_recovered(path, caplog, None)


def test_another_programs_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE notes (body TEXT)")
    raw.commit()
    raw.close()
    assert_recovered(path, caplog, None)


def test_right_version_missing_tables(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    filled_spool(path, 1)
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE meta")
    raw.commit()
    raw.close()
    assert_recovered(path, caplog, None)


def test_zero_length_file_is_simply_a_new_spool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An empty file holds nothing to save: it becomes the spool, without a warning."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"")
    with Spool(path) as sp:
        assert append(sp, "new")
        assert sp.stats().depth == 1 and sp.stats().moved_aside is None
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_corruption_met_by_two_connections_moves_aside_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two open spools (as two shells) meet one corrupt file: it is moved aside once, both use the new one."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "spool.sqlite3"
    first, second = Spool(path), Spool(path)
    append(first, "a")
    assert second.list_pending()[0].handle == "a"
    first.close()
    second.close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    # Both were opened on the file; now it is overwritten in place (same inode).
    first.open()
    second.open()
    with path.open("r+b") as f:
        f.write(os.urandom(path.stat().st_size))
    assert append(first, "b")
    assert append(second, "c")
    assert sorted(e.handle for e in first.list_pending()) == ["b", "c"]
    first.close()
    second.close()
    assert len([p for p in tmp_path.glob("*.corrupt-*") if not p.name.endswith("-wal")]) == 1
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def damage_past_the_first_page(path: Path) -> None:
    """Write over every page of the (checkpointed) spool but the first, in place: SQLite finds
    nothing wrong before it reads a table."""
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    with path.open("r+b") as f:
        f.seek(page)
        f.write(os.urandom(path.stat().st_size - page))


def test_damage_met_inside_a_write_moves_the_file_aside_and_says_the_write_was_not_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A `with transaction()` block runs once: damage it meets half way is not retried in it. The
    file goes aside, the error says the write was not made, and the next write goes to a fresh spool."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "spool.sqlite3"
    sp = Spool(path)
    for n in range(20):
        append(sp, f"h{n}", metadata={"filler": "x" * 3000})
    damage_past_the_first_page(path)
    runs = []
    expected = pytest.raises(SpoolError, match="damaged during a write, which was not made")
    with expected as raised, sp.transaction() as conn:
        runs.append(conn.execute("SELECT COUNT(*) FROM events").fetchone())
    assert runs == []  # the block stopped at its first read: nothing after it ran
    assert "moved aside" in str(raised.value)
    assert append(sp, "next")
    assert [e.handle for e in sp.list_pending()] == ["next"]
    assert sp.stats().moved_aside is not None
    sp.close()
    assert len([p for p in tmp_path.glob("*.corrupt-*") if not p.name.endswith("-wal")]) == 1
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_damage_met_while_taking_the_outbox_in_loses_no_record(tmp_path: Path) -> None:
    """The agent's take-in meets the damage half way: its records stay in the outbox and are taken
    into the fresh spool by the next take-in."""
    path = tmp_path / "spool.sqlite3"
    sp = Spool(path)
    for n in range(20):
        append(sp, f"h{n}", metadata={"filler": "x" * 3000})
    damage_past_the_first_page(path)
    outbox = Outbox(path, caps=(10_000, 64 * 1024 * 1024, 30 * 86400.0))
    event = {"event_id": "id-shell", "event_type": "session_start"}
    assert outbox.append_start("shell", DEST, event, pid=1, pid_start_time=2, boot_id="b")
    with pytest.raises(SpoolError, match=r"damaged during a (read|write)"):
        sp.take_in()
    assert [r.handle for r in sp.outbox_records()] == ["shell"]
    assert sp.take_in() == 1
    assert sp.release_taken() == 1
    assert [e.handle for e in sp.list_pending()] == ["shell"]
    sp.close()


def test_a_read_only_connection_meets_damage_and_leaves_the_file(tmp_path: Path) -> None:
    """`status` and `spool list` read without the power to move a file: they say so, touch nothing."""
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as sp:
        for n in range(20):
            append(sp, f"h{n}", metadata={"filler": "x" * 3000})
    damage_past_the_first_page(path)
    before = path.read_bytes()
    reader = Spool(path, read_only=True)
    with pytest.raises(SpoolError, match="left untouched"):
        reader.list_pending()
    reader.close()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_spool_moved_away_under_an_open_connection(tmp_path: Path) -> None:
    """When another process moves the file aside, the next append follows the path, not the old file."""
    path = tmp_path / "spool.sqlite3"
    sp = Spool(path)
    append(sp, "a")
    for suffix in ("", "-wal"):
        os.replace(f"{path}{suffix}", f"{path}.corrupt-x{suffix}")
    os.unlink(f"{path}-shm")
    assert append(sp, "b")
    assert [e.handle for e in sp.list_pending()] == ["b"]
    sp.close()
    with Spool(path) as fresh:
        assert [e.handle for e in fresh.list_pending()] == ["b"]


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    """A spool whose directory cannot exist is a SpoolError naming the directory."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where a directory should be")
    for path in (blocker / "spool.sqlite3", blocker / "deeper" / "spool.sqlite3"):
        sp = Spool(path)
        with pytest.raises(SpoolError, match=r"spool directory .*state.* cannot be created"):
            append(sp, "a")
    assert blocker.read_text() == "a file where a directory should be"


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    """A spool path that is not a file is a SpoolError, not a crash."""
    (tmp_path / "spool.sqlite3").mkdir()
    with pytest.raises(SpoolError, match="spool"):
        Spool(tmp_path / "spool.sqlite3").open()


def test_files_and_directories_are_private(tmp_path: Path) -> None:
    """New directories are 0700, the database and its WAL files 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "oneiric-session" / "spool.sqlite3"
        with Spool(path) as sp:
            append(sp, "a")
            for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_token_never_reaches_the_disk(tmp_path: Path) -> None:
    """A 'token' key anywhere in an event is removed before writing: not in the database, not in the WAL."""
    secret = "eyJhbGciOiJIUzI1NiJ9.SECRET-TOKEN-4f9c2b7d1e"
    path = tmp_path / "spool.sqlite3"
    sp = Spool(path)
    event = {
        "event_id": "id-a",
        "event_type": "session_start",
        "token": secret,
        "metadata": {"Token": secret, "nested": [{"token": secret, "kept": "yes"}]},
    }
    assert sp.append_start("a", DEST, event, pid=1, pid_start_time=None, boot_id=None)
    assert sp.append_end("a", DEST, {"session_id": "a", "token": secret})
    (row,) = sp.list_pending()[:1]
    assert row.payload == {
        "event_id": "id-a",
        "event_type": "session_start",
        "metadata": {"nested": [{"kept": "yes"}]},
    }
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"spool.sqlite3", "spool.sqlite3-wal"}
    assert any(b"kept" in p.read_bytes() for p in files)  # the event is there...
    for p in files:
        assert b"SECRET-TOKEN" not in p.read_bytes(), p  # ...its token is not
    sp.close()
    for p in tmp_path.iterdir():
        assert b"SECRET-TOKEN" not in p.read_bytes(), p


def test_the_directory_lock_taken_again_by_its_thread_under_another_name_does_not_wait(
    tmp_path: Path,
) -> None:
    """Reentrant in a thread by the directory itself, not its spelling (a second flock would wait on
    itself); another thread does wait for it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    nested_done, other_got_it = threading.Event(), threading.Event()

    def other() -> None:
        with directory_lock(real / "spool.sqlite3"):
            other_got_it.set()

    def nested() -> None:
        with directory_lock(real / "spool.sqlite3"), directory_lock(tmp_path / "link" / "spool.sqlite3"):
            nested_done.set()
            waiting = threading.Thread(target=other, daemon=True)
            waiting.start()
            assert not other_got_it.wait(0.3)  # sleep-ok: a negative, bounded look at a real lock
        waiting.join(10)

    holder = threading.Thread(target=nested, daemon=True)
    holder.start()
    holder.join(20)
    assert nested_done.is_set(), "the nested directory_lock waited on its own thread"
    assert other_got_it.is_set()


def test_a_directory_its_user_can_write_but_not_list_still_takes_a_new_spool(
    other_user: pwd.struct_passwd,
) -> None:
    """Mode 0300 (a drop directory): the files lock cannot open it, so SQLite's locking is all there
    is, as before that lock; the spool is made and used. As a real second user (root reads anyway)."""
    base = Path(tempfile.mkdtemp(prefix="spool-0300-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(
            Path(oneiric_session.__file__).parent,
            base / "code" / "oneiric_session",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        state = base / "state"
        state.mkdir()
        os.chown(state, other_user.pw_uid, other_user.pw_gid)
        os.chmod(state, 0o300)
        script = (
            "import sys; from oneiric_session.spool import Spool; spool = Spool(sys.argv[1]); "
            "spool.meta_set('k', 'v'); print(spool.meta_get('k')); spool.close()"
        )
        result = subprocess.run(
            as_user(other_user, "-c", script, str(state / "s.sqlite3")),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(base / "code")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout.strip()) == (0, "v"), result.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
