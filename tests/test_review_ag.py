"""Review ag: the operator commands (`status`, `spool list|replay`, `who`, `last`) and the intake."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.spool import Spool
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import Scene

CAPS = (10_000, 64 * 1024 * 1024, 30 * 86400.0)


def _start(scene: Scene, handle: str, component: str = "demo") -> None:
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name=component, shell_type="S", metadata=None, limits=Limits())
    assert Outbox(scene.spool_path, caps=CAPS).append_start(
        handle, destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )


def _end(scene: Scene, handle: str) -> None:
    destination = load_config(environ=scene.env).destination()
    end = events.build_end_event(
        session_id=handle, exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )
    assert Outbox(scene.spool_path, caps=CAPS).append_end(handle, destination, end)


def _corrupt_record(scene: Scene, name: str = "local-broken.start") -> None:
    """A finished file in the outbox (final newline, ours, 0600) that is no record: never taken in."""
    path = Path(outbox_dir(scene.spool_path), name)
    path.write_bytes(b"this is not a record\n")
    os.chmod(path, 0o600)


def _delivery(scene: Scene) -> dict:
    result = scene.run("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["delivery"]


def test_status_does_not_count_a_record_that_is_never_read_once_the_database_exists(scene: Scene) -> None:
    """A corrupt record in the outbox is "never read, so never delivered" (status's own warning),
    and without a database `status` does not count it; once the database exists (nothing taken in
    yet) it is counted as an event waiting and as an open session, and `spool list` disagrees."""
    _start(scene, "local-good")
    _corrupt_record(scene)
    before = _delivery(scene)  # no database yet
    assert (before["depth"], before["open_sessions"]) == (1, 1), before
    with Spool(scene.spool_path) as spool:  # the database now exists; the outbox is unchanged
        spool.enforce_limits()
    assert scene.spool_path.exists() and len(os.listdir(outbox_dir(scene.spool_path))) == 2
    after = _delivery(scene)
    listed = json.loads(scene.run("spool", "list", "--json").stdout)["pending"]
    assert len(listed) == 1
    assert (after["depth"], after["open_sessions"]) == (1, 1), after


def test_status_does_not_count_a_session_whose_end_is_written_as_open(scene: Scene) -> None:
    """A shell that started and ended (both records in the outbox, no agent yet) has no open
    session; `status` says open_sessions 1 until an agent takes the records in, then 0."""
    _start(scene, "local-done")
    _end(scene, "local-done")
    waiting = _delivery(scene)
    assert waiting["depth"] == 2, waiting
    with Spool(scene.spool_path) as spool:
        assert spool.take_in() == 2
    assert _delivery(scene)["open_sessions"] == 0  # the same session, taken in
    assert waiting["open_sessions"] == 0, waiting


def test_who_leaves_an_unusable_spool_untouched(scene: Scene) -> None:
    """`who` reads the spool only for its IDLE column, yet opens it as the agent does: a spool
    file it cannot use is moved aside and a fresh one created, by a listing command (status and
    spool list say `left untouched`)."""
    scene.spool_path.parent.mkdir(parents=True, mode=0o700)
    scene.spool_path.write_bytes(b"not a database " * 100)
    os.chmod(scene.spool_path, 0o600)
    result = scene.run("who")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(scene.spool_path.parent)) == ["spool.sqlite3"], result.stderr
    assert scene.spool_path.read_bytes() == b"not a database " * 100


def _session_database_with_an_infinite_duration(tmp_path: Path) -> Path:
    """A session database as another program may leave it: a REAL duration that is infinite
    (the text table already shows such a duration as "-": tests/test_hardening_who_last.py)."""
    import sqlite3

    from oneiric_session.server.store import NewSession, SessionEnding, SessionStore

    db = tmp_path / "sessions.sqlite3"
    store = SessionStore(db)
    started = NewSession("e-1", "c-1", "c", "S", "h", 5, {"username": "u"}, {}, "2026-12-01T10:00:00Z", {})
    session_id = store.record_start(started)
    store.record_end(SessionEnding(session_id, "2026-12-01T11:00:00Z", "user_exit", 5.0, {}))
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sessions SET duration_seconds = 9e999")  # +inf
    conn.commit()
    conn.close()
    return db


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_last_json_is_json_when_a_duration_is_infinite(scene: Scene) -> None:
    """`last --json` printed `"duration_seconds": Infinity`: not JSON (RFC 8259), refused by jq
    and every strict parser; operations.md says the field is "a number, or null"."""
    db = _session_database_with_an_infinite_duration(scene.root)
    for command in ("last", "sessions"):
        result = scene.run(command, "--json", "--db", str(db))
        assert result.returncode == 0, result.stderr
        (row,) = _strict_json(result.stdout)  # ValueError: Infinity is not JSON
        assert row["duration_seconds"] is None


def _poisoned_copy(scene: Scene, template: str, name: bytes, **fields: str) -> None:
    """A finished record of ours (0600, final newline, plain ASCII JSON) whose text holds a lone
    surrogate escape (`\\ud800`): valid JSON, but no UTF-8 text; written under the bytes `name`."""
    directory = Path(outbox_dir(scene.spool_path))
    record = json.loads((directory / template).read_text())
    (directory / template).unlink()
    record.update(fields)
    path = os.path.join(os.fsencode(directory), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (json.dumps(record) + "\n").encode("ascii"))
    os.close(fd)


def test_a_record_holding_a_lone_surrogate_does_not_stop_the_intake(scene: Scene) -> None:
    """A malformed record that reads (its event id `\\ud800`, or its handle that of a file named
    with a byte that is no UTF-8) raised UnicodeEncodeError out of `Intake.take_in` (documented
    to raise only SpoolError): the whole batch rolled back, so the valid record beside it was
    not taken in either; `spool replay` ended in a traceback, and so does every agent at its
    first look (nothing is ever delivered again until someone finds and removes the file)."""
    _start(scene, "local-good")
    _start(scene, "local-tmpl1")
    _start(scene, "local-tmpl2")
    _poisoned_copy(
        scene, "local-tmpl1.start", b"local-poison.start", handle="local-poison", event_id="\ud800"
    )
    _poisoned_copy(scene, "local-tmpl2.start", b"local-\xff.start", handle="local-\udcff")
    with Spool(scene.spool_path) as spool:
        assert spool.take_in() == 1  # UnicodeEncodeError on caefec8
        assert [e.handle for e in spool.list_pending() if e.row_id] == ["local-good"]
    names = sorted(os.listdir(os.fsencode(outbox_dir(scene.spool_path))))
    assert b"local-poison.start" in names and b"local-\xff.start" in names  # left where they are


def test_spool_replay_delivers_beside_a_record_holding_a_lone_surrogate(scene: Scene) -> None:
    """The same record seen by the operator: `spool replay` ended in a traceback and delivered nothing."""
    _start(scene, "local-good", component="good")
    _start(scene, "local-tmpl")
    _poisoned_copy(scene, "local-tmpl.start", b"local-poison.start", handle="local-poison", event_id="\ud800")
    result = scene.run("spool", "replay")
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert [s["component_name"] for s in scene.sessions()] == ["good"]


def test_an_end_waits_beside_its_start_that_is_left_where_it_is(scene: Scene) -> None:
    """operations.md: "While a start is left there, its session's end waits beside it for a minute
    at most (taken alone, it would find no session)". A start left because it is another user's
    (say a `sudo` slip the operator fixes with chown, as the log line invites) does not hold its
    end: the end is taken at once, alone, and lost as `no_start`; the start, once fixed, becomes a
    session that never ends."""
    _start(scene, "local-sudo")
    _end(scene, "local-sudo")
    start = os.path.join(outbox_dir(scene.spool_path), "local-sudo.start")
    os.chown(start, 4242, 4242)  # left where it is: another user's
    with Spool(scene.spool_path) as spool:
        taken = spool.take_in()
        drops = spool.stats().drops
    assert (taken, drops) == (0, {}), (taken, drops)
    assert os.path.exists(os.path.join(outbox_dir(scene.spool_path), "local-sudo.end"))


def test_listing_commands_leave_a_database_that_is_not_a_session_database_untouched(scene: Scene) -> None:
    """`last --db PATH` (also `who`, `sessions`) naming some other program's SQLite file by
    mistake answered "no sessions" (exit 0) after writing into it: a `sessions` table and five
    indexes added, user_version set to 2, the file switched to WAL mode. A listing must not
    convert a file (the spool's listings say `is not a usable spool …; left untouched`)."""
    import sqlite3

    db = scene.root / "app.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('alice')")
    conn.commit()
    conn.close()
    for command in ("last", "who", "sessions"):
        result = scene.run(command, "--db", str(db))
        conn = sqlite3.connect(db)
        try:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        assert (tables, version, mode) == (["users"], 0, "delete"), (command, result.stdout)
        assert result.returncode != 0, (command, result.stdout)


def _spool_of_two_sessions_with(scene: Scene, sql: str) -> None:
    """A spool holding two waiting starts (local-a, then local-b), then one statement run on it:
    values SQLite cannot tell are damaged (it keeps no checksums: a flipped byte in a payload
    passes `PRAGMA integrity_check`), or a row gone."""
    import sqlite3

    _start(scene, "local-a", component="first")
    _start(scene, "local-b", component="second")
    with Spool(scene.spool_path) as spool:
        assert spool.take_in() == 2
        spool.release_taken()
    conn = sqlite3.connect(scene.spool_path)
    conn.execute(sql)
    conn.commit()
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# One byte of local-a's payload flipped: its first "{" is a "}".
FLIPPED_PAYLOAD = "UPDATE events SET payload = '}' || substr(payload, 2) WHERE handle = 'local-a'"


def test_spool_list_shows_a_spool_with_a_damaged_payload_without_a_traceback(scene: Scene) -> None:
    """`spool list` (and `--json`) ended in a JSONDecodeError traceback: one damaged payload hid
    every other row. (The agent is worse off: `next_batch` raises at every look, it logs
    "unexpected error" and delivers nothing of that destination, local-b included.)"""
    _spool_of_two_sessions_with(scene, FLIPPED_PAYLOAD)
    for args in (("spool", "list"), ("spool", "list", "--json")):
        result = scene.run(*args)
        assert "Traceback" not in result.stderr, result.stderr[-400:]
        assert result.returncode == 1
        assert "local-b" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("sql", "command"),
    [
        ("DELETE FROM totals", ("status",)),
        ("DELETE FROM totals", ("spool", "list")),
        (
            "INSERT OR REPLACE INTO meta (key, value)"
            """ VALUES ('spool.rejoined', '{"at": 1e20, "message": "joined"}')""",
            ("status",),
        ),
        (
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('moved_aside', x'2f746d702f78')",
            ("status", "--json"),
        ),
    ],
    ids=[
        "status-no-totals-row",
        "list-no-totals-row",
        "status-rejoined-far-future",
        "status-json-moved-aside-blob",
    ],
)
def test_status_and_list_of_a_spool_with_odd_values_say_so_without_a_traceback(
    scene: Scene, sql: str, command: tuple[str, ...]
) -> None:
    """A spool whose totals row is gone, or whose meta table holds a value no agent wrote,
    made `status` / `spool list` end in a traceback (TypeError, OverflowError, "bytes is not
    JSON serializable"; the text form of the last one works, its --json does not)."""
    _spool_of_two_sessions_with(scene, sql)
    result = scene.run(*command)
    assert "Traceback" not in result.stderr, result.stderr.strip().splitlines()[-1]


def _ended_session_then_a_start_rewritten(scene: Scene, handle: str, **change: Any) -> None:
    """A session ended and waiting in the spool (local-a), then the start of `handle` in the outbox
    with each field named in `change` rewritten by its function."""
    _start(scene, "local-a")
    _end(scene, "local-a")
    with Spool(scene.spool_path) as spool:
        assert spool.take_in() == 2
        spool.release_taken()
    _start(scene, handle)
    path = Path(outbox_dir(scene.spool_path), f"{handle}.start")
    record = json.loads(path.read_text())
    record.update({name: rewrite(record[name]) for name, rewrite in change.items()})
    path.write_text(json.dumps(record) + "\n")


def test_a_record_dated_in_the_future_does_not_age_out_what_waits(scene: Scene) -> None:
    """Taking a record in applies the caps with `now` = the record's own created_at. A record
    dated a year ahead (a malformed one, or written while the clock was stepped forward, before
    NTP corrected it) made the intake drop, as `max_age`, a session ended seconds ago and still
    waiting for its server: a valid session lost to one odd record."""
    _ended_session_then_a_start_rewritten(scene, "local-future", created_at=lambda at: at + 365 * 86400)
    with Spool(scene.spool_path) as spool:
        spool.take_in()
        kept = sorted((e.handle, e.kind) for e in spool.list_pending())
        drops = spool.stats().drops
    assert drops == {}, drops
    assert kept == [("local-a", "end"), ("local-a", "start"), ("local-future", "start")]


def test_status_does_not_hang_on_a_fifo_where_the_lock_file_goes(scene: Scene) -> None:
    """`agent_holds_lock` opens `<spool>.lock` O_RDONLY without O_NONBLOCK: a FIFO there (a
    stale `mkfifo`, a tool's pipe) holds `status` for ever, while `spool list` and `spool
    replay` refuse that spool at once ("… .lock is not a regular file")."""
    import subprocess
    import sys

    _start(scene, "local-a")
    lock = Path(str(scene.spool_path) + ".lock")
    os.mkfifo(lock, 0o600)
    try:
        status = subprocess.Popen(
            [sys.executable, "-m", "oneiric_session", "status", "--json"],
            env=scene.env,
            cwd=scene.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, _ = status.communicate(timeout=4.5)  # about 1 s when it does not block
        except subprocess.TimeoutExpired:
            status.kill()
            status.communicate()
            raise AssertionError("status still running after 4.5 s: blocked opening the FIFO") from None
        assert status.returncode == 0
        assert json.loads(out)["delivery"]["depth"] == 1
    finally:
        lock.unlink()  # (no lock file of any kind left for the fixture's teardown)


def test_spool_replay_prints_the_destination_terminal_safe(scene: Scene) -> None:
    """`spool replay` printed the configured server's launch line raw ("delivered N event(s) to
    …"): a settings value (./settings/adapters.yml of a cloned project is read by default)
    holding an OSC or CSI sequence retitles or clears the terminal. `status` shows the same
    value escaped; operations.md: everything printed from a file goes through safetext."""
    scene.configure(server__command="/opt/sb\x1b]0;owned\x07\x1b[2J/python", server__args=["-m", "x\x1b[31m"])
    result = scene.run("spool", "replay")
    assert "delivered 0 event(s)" in result.stdout, result.stdout + result.stderr
    assert "\x1b" not in result.stdout + result.stderr, repr(result.stdout)


def test_a_record_with_caps_no_setting_allows_does_not_empty_the_spool(scene: Scene) -> None:
    """The reader accepts any caps that are figures (`_figure`: 0 included) and the intake applies
    them: a record claiming max_rows 0, max_bytes 0, max_age 0 (the settings allow at least 1,
    65536 and more than 0) drops every session waiting in the spool, other shells' included."""
    _ended_session_then_a_start_rewritten(scene, "local-zero", caps=lambda _: [0, 0, 0])
    with Spool(scene.spool_path) as spool:
        spool.take_in()
        kept = sorted(e.handle for e in spool.list_pending() if e.row_id)
        drops = spool.stats().drops
    assert "local-a" in kept, drops


# --- added on landing: what the fixes above promise, end to end ----------------------------------


def test_the_agent_makes_a_damaged_row_a_dead_letter_and_delivers_the_others(scene: Scene) -> None:
    """(#8, the agent's side) A row whose event no longer parses is never sent: it becomes a dead
    letter saying why (with the end of its session, as a refused start's), and the rows beside it
    are delivered, where `next_batch` used to raise at every look and deliver nothing."""
    from oneiric_session.spool import DAMAGED, DEAD_DAMAGED
    from tests.support.delivery import wait_until

    _spool_of_two_sessions_with(scene, FLIPPED_PAYLOAD)
    _end(scene, "local-a")
    scene.start_agent()
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    assert [s["component_name"] for s in scene.sessions()] == ["second"]
    with scene.spool() as spool:
        dead = {(e.handle, e.kind): (e.dead_category, e.dead_reason) for e in spool.list_dead()}
    assert dead[("local-a", "start")] == (DEAD_DAMAGED, DAMAGED)
    assert dead[("local-a", "end")][0] == "start refused"


def test_the_least_caps_a_record_may_hold_are_those_the_settings_allow() -> None:
    """(#11) `outbox_reader.LEAST_CAPS` restates the settings' lower bounds: kept in step."""
    from oneiric_session.config.models import SpoolSettings
    from oneiric_session.spool.outbox_reader import LEAST_CAPS

    def bound(name: str, kind: str) -> float:
        (found,) = [getattr(m, kind) for m in SpoolSettings.model_fields[name].metadata if hasattr(m, kind)]
        return float(found)

    assert (bound("max_rows", "ge"), bound("max_bytes", "ge"), bound("max_age_days", "gt")) == LEAST_CAPS
