"""`spool replay` moves only the events of failing or silent destinations to the one configured now.

The spool is shared by every settings directory of the user, so a replay in one project must
leave another project's answering server its events.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneiric_session.agent.status import status_path
from oneiric_session.cli.spool import _retarget
from oneiric_session.spool import Spool
from oneiric_session.tracking.destination import Destination

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
