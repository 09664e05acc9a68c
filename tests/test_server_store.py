"""The bundled server's SQLite store: ids, idempotency, ends, and several writers at once."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session.mcp_compat import MCPError, answer_view, in_memory_client
from oneiric_session.server.app import build_server
from oneiric_session.server.listing import MAX_PAGE_JSON_BYTES, MAX_PAGE_SIZE, SessionFilter
from oneiric_session.server.models import MAX_TIMESTAMP_CHARS
from oneiric_session.server.store import NewSession, SessionEnding, SessionStore
from oneiric_session.tracking.limits import MAX_NAME_CHARS
from tests.support.server_process import end_event, start_event, structured_answer
from tests.support.sqlite_locks import index_lock
from tests.support.together import failures_together


def new_session(event_id: str) -> NewSession:
    return NewSession(
        event_id=event_id,
        base_session_id="shell-20260206-123456",
        component_name="shell",
        shell_type="Shell",
        hostname="h",
        pid=1,
        user={"username": "u", "home": "/h"},
        environment={"python_version": "3", "platform": "p", "cwd": "/c"},
        started_at="2026-02-06T12:34:56Z",
        metadata={"k": ["v", 1]},
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    store = SessionStore(tmp_path / "nested" / "s.sqlite3")
    yield store
    store.close()


def test_ids_are_suffixed_only_for_other_events(store: SessionStore) -> None:
    assert store.record_start(new_session("a")) == "shell-20260206-123456"
    assert store.record_start(new_session("b")) == "shell-20260206-123456-2"
    assert store.record_start(new_session("a")) == "shell-20260206-123456"
    assert store.record_start(new_session("c")) == "shell-20260206-123456-3"
    assert store.count_sessions() == 3


def test_ends(store: SessionStore) -> None:
    session_id = store.record_start(new_session("a"))
    assert (
        store.record_end(
            SessionEnding(
                "nope", ended_at="2026-02-06T12:35:00Z", exit_reason=None, duration_seconds=None, metadata={}
            )
        )
        == "not_found"
    )
    assert (
        store.record_end(
            SessionEnding(
                session_id,
                ended_at="2026-02-06T12:35:00+01:00",
                exit_reason="eof",
                duration_seconds=None,
                metadata={},
            )
        )
        == "ended"
    )
    assert (
        store.record_end(
            SessionEnding(
                session_id,
                ended_at="2026-02-07T00:00:00Z",
                exit_reason="later",
                duration_seconds=5.0,
                metadata={},
            )
        )
        == "ended"
    )
    [row] = store.list_sessions()
    # +01:00 is an hour *before* 12:34:56Z: no negative durations are invented.
    assert (row["status"], row["exit_reason"], row["duration_seconds"]) == ("ended", "eof", None)


def test_wal_mode_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SessionStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("PRAGMA user_version=99")
    with pytest.raises(sqlite3.DatabaseError, match="newer oneiric-session"):
        SessionStore(path)


def test_a_listing_keeps_its_lock_on_the_write_ahead_index_it_maps(tmp_path: Path) -> None:
    """`SessionStore.existing` (`sessions`, `who`, `last`) opened the store while its read-only
    check was open; the store's opening opens and closes the database's files, and closing any
    descriptor of a file drops every POSIX lock the process holds on it. A server opening the
    database then found the index unlocked, truncated it, and the listing died of SIGBUS (CI)."""
    path = tmp_path / "s.sqlite3"
    writer = SessionStore(path)
    writer.record_start(new_session("a"))
    writer.close()
    store = SessionStore.existing(path)
    try:
        assert [row["component_name"] for row in store.list_sessions()] == ["shell"]
        assert index_lock(path) == "held"
    finally:
        store.close()


def test_separate_connections_writing_at_once_never_share_an_id(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    stores = [SessionStore(path) for _ in range(4)]
    ids: list[str] = []

    def write(index: int, store: SessionStore) -> None:
        for n in range(25):
            ids.append(store.record_start(new_session(f"{index}-{n}")))

    threads = [threading.Thread(target=write, args=pair) for pair in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(set(ids)) == 100


async def test_a_storage_failure_is_a_json_rpc_error_not_a_refusal(tmp_path: Path) -> None:
    """The event is not at fault, so no `status: "error"` (permanent): the client keeps it and retries."""
    store = SessionStore(tmp_path / "s.sqlite3")
    async with in_memory_client(build_server(store)) as client:
        store.close()  # every later query fails with sqlite3.ProgrammingError
        with pytest.raises(MCPError, match="session store unavailable"):
            await client.call_tool("track_session_start", start_event())


# Each process opens database number i of ROUNDS at the same moment as the others (time.monotonic
# is one clock for all processes on Linux): `serve` processes, and `who` / `last` / `sessions`.
ROUNDS = 25
OPENER = """
import sys, time
from pathlib import Path
from oneiric_session.server.store import SessionStore

root, rounds, start, step = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
failures = []
for i in range(rounds):
    time.sleep(max(0.0, start + i * step - time.monotonic()))  # sleep-ok: the processes' shared moment
    try:
        SessionStore(root / str(i) / "sessions.sqlite3").close()
    except Exception as exc:
        failures.append(f"{i}: {type(exc).__name__}: {exc}")
print("\\n".join(failures))
"""


def test_processes_opening_a_new_database_together_all_get_it(tmp_path: Path) -> None:
    """A new database is made WAL by its first opener; the others wait for it, never 'database is
    locked' (SQLite does not wait on the lock that switches a file's journal mode)."""
    failures = failures_together(OPENER, [[str(tmp_path), str(ROUNDS)]] * 5)
    assert failures == []


def test_a_page_holds_at_most_a_mebibyte_of_sessions_and_the_rest_follows(store: SessionStore) -> None:
    """Rows with long names (escaped six-fold in JSON) fill a page before its count: one page of 500
    such rows made an answer over the 4 MiB a client takes, and `who`/`last` failed for everyone."""
    long_name = "\x1b" * MAX_NAME_CHARS
    for n in range(60):
        session = dataclasses.replace(
            new_session(f"e-{n}"), base_session_id=f"s-{n}", shell_type=long_name, hostname=long_name
        )
        store.record_start(session)
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_page(SessionFilter(), limit=MAX_PAGE_SIZE, cursor=cursor)
        assert len(json.dumps(page.sessions)) <= MAX_PAGE_JSON_BYTES + len(json.dumps(page.sessions[-1]))
        seen += [s["session_id"] for s in page.sessions]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(f"s-{n}" for n in range(60))  # each once, over several pages
    assert len(seen) > len(page.sessions)


async def test_a_name_longer_than_any_real_one_is_refused(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "db.sqlite3")
    async with in_memory_client(build_server(store)) as client:
        event = start_event(shell_type="S" * (MAX_NAME_CHARS + 1))
        answer = await client.call_tool("track_session_start", event)
    refused = structured_answer(answer_view(answer))
    assert refused["status"] == "error" and f"at most {MAX_NAME_CHARS} characters" in refused["error"]


@pytest.mark.parametrize("field", ["start", "end"])
async def test_a_timestamp_of_any_length_is_refused(tmp_path: Path, field: str) -> None:
    """The pattern takes any number of fraction digits: a start or end of megabytes broke every page
    holding it, and one SQLite could not date gave a cursor the server then refused."""
    store = SessionStore(tmp_path / "db.sqlite3")
    long = "2026-02-06T12:34:56." + "1" * 400 + "Z"
    async with in_memory_client(build_server(store)) as client:
        if field == "start":
            answer = await client.call_tool("track_session_start", start_event(timestamp=long))
        else:
            started = structured_answer(
                answer_view(await client.call_tool("track_session_start", start_event()))
            )
            answer = await client.call_tool(
                "track_session_end", end_event(started["session_id"], timestamp=long)
            )
    refused = structured_answer(answer_view(answer))
    assert refused["status"] == "error" and f"more than {MAX_TIMESTAMP_CHARS} characters" in refused["error"]
    assert long not in refused["error"]


def test_what_our_shells_send_under_any_valid_limits_the_server_takes() -> None:
    """`limits.max_string_chars` may be 65,536: a shell type that long was sent, and refused as
    permanent by the bundled server (a dead letter). Names are cut at MAX_NAME_CHARS."""
    from oneiric_session.server.models import SessionStartEvent
    from oneiric_session.tracking import events
    from oneiric_session.tracking.limits import Limits

    limits = Limits(max_string_chars=65536)
    event = events.build_start_event(
        component_name="demo", shell_type="S" * 70000, metadata=None, limits=limits
    )
    assert len(event["shell_type"]) == MAX_NAME_CHARS
    SessionStartEvent.model_validate(event)
