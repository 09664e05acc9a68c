"""`spool replay` moves only the events of failing or silent destinations to the one configured now.

The spool is shared by every settings directory of the user, so a replay in one project must
leave another project's answering server its events.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from oneiric_session.agent import DeliveryAgent, uncapped_spool
from oneiric_session.agent.status import status_path
from oneiric_session.cli.spool import _retarget
from oneiric_session.common.digest import sha256_hex
from oneiric_session.spool import Spool
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination, Tuning
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import WAIT_SECONDS

BROKEN = Destination(command="/nowhere/server")
FLEET = Destination(transport="http", url="http://fleet.example:8678/mcp")
SILENT = Destination(command="never-tried")
NOW = Destination(command="fixed-server")


def start(spool: Spool, n: int, destination: Destination) -> None:
    event = {"event_id": f"00000000-0000-4000-8000-{n:012d}", "event_type": "session_start"}
    assert spool.append_start(f"h{n}", destination, event, pid=n, pid_start_time=None, boot_id=None)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    with Spool(tmp_path / "spool.sqlite3") as s:
        start(s, 1, BROKEN)
        start(s, 2, FLEET)
        start(s, 3, SILENT)
        agent_view = {
            BROKEN.key: {"last_error": "server command not found", "consecutive_failures": 3},
            FLEET.key: {"last_error": None, "auth_error": None, "consecutive_failures": 0},
        }
        status_path(s.path).write_text(json.dumps(agent_view))
        yield s


def where(spool: Spool) -> dict[str, str]:
    return {row.handle: row.destination_key for row in spool.list_pending()}


def test_failing_and_silent_destinations_move_an_answering_one_stays(spool: Spool) -> None:
    _retarget(spool, NOW, everything=False)
    assert where(spool) == {"h1": NOW.key, "h2": FLEET.key, "h3": NOW.key}


def test_all_moves_everything(spool: Spool) -> None:
    _retarget(spool, NOW, everything=True)
    assert set(where(spool).values()) == {NOW.key}


PASSWORD_URL = "http://fleet:pw-0451@127.0.0.1:1/mcp"


def _spooled_by_an_older_version(tmp_path: Path) -> tuple[Path, Destination]:
    """A start for an http destination whose url holds a password, as 1aa20e4 spooled it: under the
    key that version computed (the password part of it) and with the password in the stored url."""
    path = tmp_path / "spool.sqlite3"
    destination = Destination(transport="http", url=PASSWORD_URL)
    with uncapped_spool(path) as spool:
        start = events.build_start_event(component_name="old", shell_type="S", metadata=None, limits=Limits())
        spool.append_start("local-old", destination, start, pid=None, pid_start_time=None, boot_id=None)
    ident = {"transport": "http", "command": "", "args": [], "env": {}, "cwd": None, "url": PASSWORD_URL}
    old_key = sha256_hex(json.dumps(ident, sort_keys=True).encode())[:16]
    stored = json.dumps({**json.loads(destination.to_json()), "url": PASSWORD_URL}, sort_keys=True)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE destinations SET key = ?, json = ?", (old_key, stored))
        db.execute("UPDATE events SET destination_key = ?", (old_key,))
        db.execute("UPDATE sessions SET destination_key = ?", (old_key,))
    db.close()
    return path, destination


class Answering:
    async def start_session(self, event: object) -> str:
        return "srv-1"

    async def end_session(self, event: object) -> str:
        return "ended"

    async def aclose(self) -> None:
        pass


async def test_rows_an_older_version_spooled_under_another_key_are_delivered(tmp_path: Path) -> None:
    """Their key no longer matched their destination's: no worker ever asked for them, and `spool
    replay` went round for ever at full CPU. They move to the key this version computes, and the
    destination is stored as this version stores it (the password a reference: the agent waits for
    it from a shell, as for any url password)."""
    path, destination = _spooled_by_an_older_version(tmp_path)
    with uncapped_spool(path) as spool:
        waiting = DeliveryAgent(spool, client_factory=lambda _d, _t: Answering())
        result = await asyncio.wait_for(waiting.replay(), WAIT_SECONDS)
        assert (result.delivered, result.remaining) == (0, 1)  # no password in memory yet
        assert spool.waiting(destination.key) == 1
        with sqlite3.connect(path) as db:  # stored as this version stores it: a reference
            assert [r[0] for r in db.execute("SELECT key FROM destinations")] == [destination.key]
            assert all("pw-0451" not in r[0] for r in db.execute("SELECT json FROM destinations"))
        db.close()
        secrets = {destination.key: destination.secrets()}  # as a shell of these settings brings them
        agent = DeliveryAgent(spool, secrets=secrets, client_factory=lambda _d, _t: Answering())
        result = await asyncio.wait_for(agent.replay(), WAIT_SECONDS)
        assert (result.delivered, result.remaining) == (1, 0)


def test_rows_moved_to_their_current_key_keep_the_current_settings_tuning(tmp_path: Path) -> None:
    """The older version's stored destination replaced the one a current shell stored (the older
    tuning won, until the agent restarted)."""
    path, destination = _spooled_by_an_older_version(tmp_path)
    current = destination._replace(tuning=Tuning(attempts=9, call_seconds=7.0))
    with uncapped_spool(path) as spool:
        start = events.build_start_event(component_name="new", shell_type="S", metadata=None, limits=Limits())
        spool.append_start("local-new", current, start, pid=None, pid_start_time=None, boot_id=None)
        assert spool.rekey() == 1
        assert spool.waiting(current.key) == 2
        assert spool.destination(current.key) == current._replace(url=current._url_at_rest())


@pytest.mark.parametrize(("built_with", "reads"), [("ON", 1), ("OFF", 0), ("FAST", 2)])
def test_the_password_an_older_version_stored_is_gone_from_the_files_once_rekeyed(
    tmp_path: Path, built_with: str, reads: int
) -> None:
    """Rekeying rewrote the row, but the old page stayed in the database file until a checkpoint,
    and an SQLite built without SECURE_DELETE (Debian's has it, python.org's and macOS's do not)
    leaves a deleted row's bytes in the page: the password stayed readable in the spool's files.
    The connection's own setting comes back afterwards, FAST too (it came back as ON: review K)."""
    path, _ = _spooled_by_an_older_version(tmp_path)
    with uncapped_spool(path) as spool:
        with spool.reading() as conn:  # this connection as such a build opens it
            conn.execute(f"PRAGMA secure_delete = {built_with}")
        assert spool.rekey() == 1
        assert [p.name for p in tmp_path.iterdir() if p.is_file() and b"pw-0451" in p.read_bytes()] == []
        with spool.reading() as conn:  # the connection's own setting again afterwards
            assert conn.execute("PRAGMA secure_delete").fetchone()[0] == reads  # FAST came back as ON
    assert [p.name for p in tmp_path.iterdir() if p.is_file() and b"pw-0451" in p.read_bytes()] == []


def test_rekeying_beside_a_reader_neither_waits_nor_holds_writers_back(tmp_path: Path) -> None:
    """The checkpoint after a rekey waited the whole busy timeout for a reader's snapshot (`status`
    mid-read), the agent's event loop stopped meanwhile and every other writer failed "database is
    locked" (review J). It is made only if it can be made at once; the file is cleared later."""
    path, _ = _spooled_by_an_older_version(tmp_path)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM destinations").fetchall()  # a snapshot held open
    with uncapped_spool(path) as spool:
        try:
            with spool.reading() as conn:  # so long that waiting for the reader would fail the test
                conn.execute("PRAGMA busy_timeout = 600000")
            moved: list[int] = []
            rekeying = threading.Thread(target=lambda: moved.append(spool.rekey()), daemon=True)
            rekeying.start()
            rekeying.join(WAIT_SECONDS)
            assert moved == [1], "rekey waited for the reader"
            with spool.reading() as conn:
                assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 600000
            writer = sqlite3.connect(path, timeout=0, isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # nobody holds the write lock
            writer.execute("COMMIT")
            writer.close()
        finally:
            reader.close()  # its snapshot gone, a checkpoint still waiting ends: the spool can close
    assert [p.name for p in tmp_path.iterdir() if p.is_file() and b"pw-0451" in p.read_bytes()] == []
