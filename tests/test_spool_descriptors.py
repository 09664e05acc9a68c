"""Reading the spool's header never drops SQLite's locks: a descriptor of a file a connection of
ours has open is closed only after the last such connection (spool/descriptors.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_plain_open_and_close_would_drop_them(tmp_path: Path) -> None:
    """What the module guards against, shown: the test above can fail."""
    path = tmp_path / "spool.sqlite3"
    sp = open_spool(path)
    os.close(os.open(path, os.O_RDONLY))
    other_process_opens_and_closes(path)
    assert not Path(f"{path}-wal").exists()
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
