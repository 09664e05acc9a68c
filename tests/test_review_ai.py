"""Review: other places where this process closes a descriptor of a database file SQLite has open.

Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's own
included ("How To Corrupt An SQLite Database File", 2.2). Commit 6aba3f9 fixed it for
`SessionStore.existing`'s read-only check; the store's opening (`_make_private`: the database, its
-wal and -shm opened and closed; `is_wal_file`: the database opened and closed) still drops the
locks of any other connection of the process to that database: a second store of the process
(`SessionStore`, `SessionStore.existing`, the public `oneiric_session.server.create_server`), and
a store reopening a replaced database (`_same_file`) while another store of the process has it.

Each lock is probed from a child process, as tests/test_server_store.py does: an exclusive
`lockf` that succeeds means no other process (ours included) holds that byte any more.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from oneiric_session.server.store import SessionStore
from tests.support.sqlite_locks import index_lock, shared_lock
from tests.test_server_store import new_session

_COUNT = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM sessions").fetchone()[0])
db.close()
"""


def _count_elsewhere(path: Path) -> int:
    """Sessions as another process (a `sessions` listing, another server) sees them; it closes after."""
    out = subprocess.run(
        [sys.executable, "-c", _COUNT, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_a_second_store_in_the_process_leaves_the_first_its_lock_on_the_wal_index(tmp_path: Path) -> None:
    """store.py `_make_private` (SessionStore.__init__): opens and closes the -shm the first store maps."""
    path = tmp_path / "s.sqlite3"
    first = SessionStore(path)
    second = None
    try:
        first.record_start(new_session("a"))
        assert index_lock(path) == "held"  # (the first store alone holds it)
        second = SessionStore(path)
        assert index_lock(path) == "held"
    finally:
        if second is not None:
            second.close()
        first.close()


def test_a_listing_in_a_serving_process_leaves_the_server_itsshared_lock(tmp_path: Path) -> None:
    """`SessionStore.existing` (what `sessions`/`who`/`last` call) in a process that serves the same
    database (`create_server` is public): `_make_private` and `is_wal_file` close the database's
    descriptors and drop the serving store's SHARED lock on the database file."""
    path = tmp_path / "s.sqlite3"
    serving = SessionStore(path)
    listing = None
    try:
        serving.record_start(new_session("a"))
        assert shared_lock(path) == "held"
        listing = SessionStore.existing(path)
        listing.list_sessions()
        assert shared_lock(path) == "held"
    finally:
        if listing is not None:
            listing.close()
        serving.close()


def test_a_session_acknowledged_after_a_second_store_opened_reaches_other_processes(tmp_path: Path) -> None:
    """The consequence: with every lock of the process gone, another process closing the database
    believes itself its last user, checkpoints and deletes the WAL and its index; the first store
    then commits (and acknowledges) into a deleted WAL that no other process ever reads."""
    path = tmp_path / "s.sqlite3"
    first = SessionStore(path)
    second = None
    try:
        first.record_start(new_session("a"))
        second = SessionStore(path)
        assert _count_elsewhere(path) == 1
        first.record_start(new_session("b"))  # acknowledged: the client deletes its copy
        assert first.count_sessions() == 2
        seen = _count_elsewhere(path)
        assert seen == 2, f"seen elsewhere: {seen}; files left: {sorted(os.listdir(tmp_path))}"
    finally:
        if second is not None:
            second.close()
        first.close()


def test_reopening_a_replaced_database_leaves_another_store_itsshared_lock(tmp_path: Path) -> None:
    """store.py `_same_file` -> `_connect` -> sqlite_files.is_wal_file: opens and closes the new
    database file, which another store of the process has reopened already."""
    path = tmp_path / "s.sqlite3"
    first, second = SessionStore(path), SessionStore(path)
    try:
        first.record_start(new_session("a"))
        for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"):  # `rm sessions.sqlite3*`
            (tmp_path / name).unlink()
        first.record_start(new_session("b"))  # reopens: the new database, held by `first`
        assert shared_lock(path) == "held"
        second.record_start(new_session("c"))  # reopens too: is_wal_file opens and closes it
        assert shared_lock(path) == "held"
    finally:
        second.close()
        first.close()


def test_a_database_made_again_after_it_was_deleted_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """`_same_file` reopened a deleted database without `make_private`: SQLite made the new file
    with the umask's mode (0644 under 022), every session after the `rm` readable by other users."""
    path = tmp_path / "s.sqlite3"
    old = os.umask(0o022)
    try:
        store = SessionStore(path)
        try:
            store.record_start(new_session("a"))
            for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"):
                (tmp_path / name).unlink()
            store.record_start(new_session("b"))
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.glob("s.sqlite3*")}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert modes and set(modes.values()) == {"0o600"}, modes
