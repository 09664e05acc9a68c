"""Review AJ of 3865a63 (server/database_file: the store's database made private by path)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.server.store import SessionStore
from tests.support.delivery import Scene


def _read_only_session_database(scene: Scene, *, journal_mode: str) -> Path:
    """A session database of ours (no sessions) that we made read-only, 0444, as a backup is
    kept, in a directory we may write (ours): a user without CAP_DAC_OVERRIDE cannot write it."""
    directory = scene.root / "backup"
    directory.mkdir(exist_ok=True)
    db = directory / "sessions.sqlite3"
    SessionStore(db).close()
    connection = sqlite3.connect(db)
    connection.execute(f"PRAGMA journal_mode={journal_mode}")
    connection.close()
    os.chmod(db, 0o444)
    return db


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(os.stat(path).st_mode))


@pytest.mark.parametrize("command", ["sessions", "last"])
@pytest.mark.parametrize("journal_mode", ["DELETE", "WAL"])
def test_a_listing_leaves_a_read_only_database_of_ours_read_only_and_unwritten(
    scene: Scene, command: str, journal_mode: str
) -> None:
    """`make_private` now chmods every lax file of ours by path (lstat + chmod 0600), where the
    previous code could only fchmod one it could open O_RDWR, which an ordinary user cannot do on
    a 0444 file. So a listing makes the read-only backup 0600, writable, and then opens it
    read-write as the server does (`existing` -> `cls(path)`): the listing writes the file (a
    rollback-journal backup is converted to WAL) instead of reading it as it is (6d00448: mode
    and bytes unchanged)."""
    db = _read_only_session_database(scene, journal_mode=journal_mode)
    before = db.read_bytes()
    result = scene.run(command, "--json", "--db", str(db), ordinary_user=True)
    assert result.returncode == 0, result.stderr.strip()[-300:]
    assert json.loads(result.stdout) == []
    assert _mode(db) == oct(0o444)
    assert db.read_bytes() == before


def test_serve_does_not_make_a_read_only_database_of_ours_writable(scene: Scene) -> None:
    """`serve --db` on a session database the user made read-only: 6d00448 could not open it to
    fchmod it, SQLite opened it read-only and `serve` said so ("attempt to write a readonly
    database", exit 2); now `make_private` chmods it 0600 behind the user's back and serves."""
    db = _read_only_session_database(scene, journal_mode="WAL")
    result = scene.run("serve", "--db", str(db), ordinary_user=True)  # stdin: none, it ends
    assert _mode(db) == oct(0o444), (result.returncode, result.stderr.strip()[-300:])


# --- next door (pre-existing, 6d00448 too): two servers when the database is deleted under them ---

_IDLE_SERVER = """
import sys
from pathlib import Path
from oneiric_session.server.store import SessionStore
from tests.test_server_store import new_session
store = SessionStore(Path(sys.argv[1]))
print(store.record_start(new_session("other")), flush=True)
sys.stdin.read()  # idle: a stdio server whose client has nothing to send
store.close()
"""


@pytest.mark.parametrize("writer", ["reopening", "starting"])
def test_a_server_writes_after_its_database_was_deleted_while_another_server_is_idle(
    tmp_path: Path, writer: str
) -> None:
    """An `rm` of the database while a second server process is idle on the old inode (its
    connection holds the old -wal and -shm, still there by name). The server that wrote next,
    reopening (`_same_file`) or starting after the `rm`, made the new empty file a WAL database
    beside those files, and `BEGIN IMMEDIATE` failed "disk I/O error" on every write for as long as
    the other process stayed idle. Now a missing database is made only after the files a deleted
    one left are removed (`make_private`)."""
    from tests.test_server_store import new_session

    path = tmp_path / "s.sqlite3"
    other = subprocess.Popen(
        [sys.executable, "-c", _IDLE_SERVER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        assert other.stdout is not None
        store = SessionStore(path)
        store.record_start(new_session("before"))
        assert other.stdout.readline().startswith("shell-")
        os.remove(path)
        if writer == "starting":
            store.close()
            store = SessionStore(path)
        errors = []
        for attempt in range(3):
            try:
                store.record_start(new_session(f"after-{attempt}"))
                break
            except sqlite3.Error as exc:
                errors.append(repr(exc))
        assert len(errors) < 3, errors
        store.close()
    finally:
        other.kill()
        other.wait()


def test_a_server_whose_database_alone_was_deleted_records_in_the_new_one(tmp_path: Path) -> None:
    """`rm sessions.sqlite3` alone (the -wal and -shm left) under one running server: what it
    records after is in the new database as other processes see it, nothing of the deleted one."""
    from tests.test_server_store import new_session

    path = tmp_path / "s.sqlite3"
    store = SessionStore(path)
    try:
        store.record_start(new_session("before"))
        os.remove(path)
        store.record_start(new_session("after"))
    finally:
        store.close()
    with sqlite3.connect(path) as other:
        events = [row[0] for row in other.execute("SELECT event_id FROM sessions")]
    other.close()
    assert events == ["after"]
