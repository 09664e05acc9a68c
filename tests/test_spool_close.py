"""Closing a shell's spool connection never checkpoints the WAL (where SQLite can be told so)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from oneiric_session.spool import Spool
from oneiric_session.tracking.destination import Destination

needs_setconfig = pytest.mark.skipif(
    not hasattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE"), reason="Python 3.12+ can tell SQLite"
)


def _append(spool: Spool) -> None:
    event = {"event_id": "e1", "component_name": "c"}
    assert spool.append_start(
        "local-1", Destination(command="x"), event, pid=1, pid_start_time=None, boot_id=None
    )


@needs_setconfig
def test_a_shell_close_leaves_the_wal_to_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    shell = Spool(path, checkpoint_on_close=False)
    _append(shell)
    shell.close()  # the last connection: SQLite would checkpoint and delete the WAL here
    assert Path(f"{path}-wal").stat().st_size > 0
    with Spool(path) as agent:  # the event is there, read through the WAL
        assert [row.handle for row in agent.list_pending()] == ["local-1"]
    assert not Path(f"{path}-wal").exists()  # the agent's last close checkpoints


def test_by_default_the_last_close_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path)
    _append(spool)
    spool.close()
    assert not Path(f"{path}-wal").exists()
