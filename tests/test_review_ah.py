"""Review AH of fdd85c4 (AF) and 15b1e1c (AG): each test fails on 15b1e1c."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from oneiric_session.agent.status import status_path
from oneiric_session.server.store import SessionStore
from oneiric_session.spool import Spool
from tests.support.delivery import Scene
from tests.test_review_ag import _spool_of_two_sessions_with, _start

# --- 1. AG #8 next door: a payload damaged into a byte that is no UTF-8 ---------------------------

# One byte of local-a's payload flipped to 0xFF (a TEXT value, as a bit flip on disk leaves it;
# `PRAGMA integrity_check` still says ok). Python's sqlite3 raises "Could not decode to UTF-8"
# while fetching the row, before `event_from_row` can read it as damaged.
NOT_UTF8 = {
    "payload": "UPDATE events SET payload = substr(payload, 1, 20) || X'FF' || substr(payload, 22)"
    " WHERE handle = 'local-a'",
    "last_error": "UPDATE events SET last_error = 'timed out ' || X'FF' WHERE handle = 'local-a'",
}


def test_next_batch_delivers_beside_a_payload_damaged_into_a_byte_that_is_no_utf8(scene: Scene) -> None:
    """`next_batch` (the agent's every look) raises SpoolError "cannot be used: Could not decode
    to UTF-8 column 'payload'": local-b is never delivered, as before AG's fix for a flipped `{`."""
    _spool_of_two_sessions_with(scene, NOT_UTF8["payload"])
    with Spool(scene.spool_path) as spool:
        batch = spool.next_batch()
    assert "local-b" in [row.handle for row in batch]
    assert [row.damaged for row in batch if row.handle == "local-a"] == [True]


@pytest.mark.parametrize("column", sorted(NOT_UTF8))
def test_spool_list_shows_the_rows_beside_a_value_damaged_into_a_byte_that_is_no_utf8(
    scene: Scene, column: str
) -> None:
    """`spool list` says the whole spool "cannot be used" and lists nothing (local-b hidden)."""
    _spool_of_two_sessions_with(scene, NOT_UTF8[column])
    result = scene.run("spool", "list")
    assert "cannot be used" not in result.stderr, result.stderr[-300:]
    assert "local-b" in result.stdout, (result.stdout[-300:], result.stderr[-300:])


# --- 2. AF #4 next door: deeply nested JSON read by `status` and `spool replay` -------------------


def test_status_and_replay_do_not_end_in_a_traceback_on_a_status_file_of_deeply_nested_json(
    scene: Scene,
) -> None:
    """`read_destinations` catches (OSError, ValueError) only: the agent's status file (ours,
    0600; its docstring allows "a damaged file") of 5000 `[` raises RecursionError out of
    `status` and `spool replay` (a traceback, exit 1)."""
    _start(scene, "local-a")
    with Spool(scene.spool_path) as spool:
        spool.take_in()
        spool.release_taken()
    path = status_path(scene.spool_path)
    path.write_bytes(b"[" * 5000)
    os.chmod(path, 0o600)
    for args in (("status",), ("spool", "replay")):
        result = scene.run(*args)
        assert "Traceback" not in result.stderr, (args, result.stderr.strip().splitlines()[-1:])


def test_a_cursor_of_deeply_nested_json_is_a_bad_query(tmp_path: Path) -> None:
    """`decode_cursor` catches ValueError, TypeError, binascii.Error: a client's cursor that is
    base64 of 5000 `[` raises RecursionError out of `list_sessions` instead of its "not a cursor
    this server handed out" answer."""
    from oneiric_session.server.listing import BadQuery, SessionFilter

    store = SessionStore(tmp_path / "sessions.sqlite3")
    cursor = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
    with pytest.raises(BadQuery):
        store.list_page(SessionFilter(False, None, None, None, None, None), cursor=cursor)


# --- 3. AG #5 next door: the listing commands still open the session database writably -----------


def test_listing_commands_read_a_session_database_they_may_only_read(scene: Scene) -> None:
    """`SessionStore.existing` checks the file read-only, then opens it as the server does
    (WAL pragma, schema, user_version in BEGIN IMMEDIATE): a real session database the user may
    only read (a backup, a read-only mount, the server's own under another user) cannot be listed:
    "cannot read the session database …: attempt to write a readonly database" (exit 2)."""
    directory = scene.root / "backup"
    directory.mkdir()
    db = directory / "sessions.sqlite3"
    SessionStore(db)._db.close()
    before = db.read_bytes()
    os.chmod(db, 0o444)
    os.chmod(directory, 0o555)
    try:
        for command in ("sessions", "last"):
            result = scene.run(command, "--json", "--db", str(db), ordinary_user=True)
            assert result.returncode == 0, (command, result.stderr.strip()[-200:])
            assert json.loads(result.stdout) == []
    finally:
        os.chmod(directory, 0o755)
    assert db.read_bytes() == before


# --- added on landing: the reviewer's untested remark ---------------------------------------------


def test_a_settings_file_of_deeply_nested_json_is_a_configuration_error(tmp_path: Path) -> None:
    """`config/files.read_file` caught JSONDecodeError only: a .json settings file of thousands
    of `[` raised RecursionError (a traceback where every other bad file gets one clear line)."""
    from oneiric_session.config.files import read_file
    from oneiric_session.errors import ConfigError

    path = tmp_path / "adapters.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_file(path)
