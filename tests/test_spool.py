"""The spool's delivery bookkeeping: order, end-after-start, acknowledgements, dead letters, retargeting."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session import spool as spool_module
from oneiric_session.errors import SpoolError
from oneiric_session.spool import DEAD_AUTH, DEAD_START_REFUSED, DROP_NO_START, Spool
from oneiric_session.spool.outbox import encode
from oneiric_session.tracking.destination import Destination, Tuning

HERE = Destination(command="srv", args=("--here",))
THERE = Destination(transport="http", url="http://there:8678/mcp")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def start_event(n: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "event_type": "session_start",
        "component_name": f"c{n}",
        **extra,
    }


def end_event(handle: str) -> dict[str, object]:
    return {"session_id": handle, "event_type": "session_end", "metadata": {"exit_reason": "user_exit"}}


def start(sp: Spool, n: int, dest: Destination = HERE) -> str:
    handle = f"h{n}"
    assert sp.append_start(handle, dest, start_event(n), pid=100 + n, pid_start_time=5000 + n, boot_id="boot")
    return handle


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sp(tmp_path: Path, clock: Clock) -> Spool:
    with Spool(tmp_path / "spool.sqlite3", clock=clock) as s:
        yield s


def test_rows_come_out_oldest_first(sp: Spool, clock: Clock) -> None:
    """Starts are delivered in the order they were spooled."""
    for n in (3, 1, 2):
        start(sp, n)
        clock.now += 1
    batch = sp.next_batch()
    assert [e.handle for e in batch] == ["h3", "h1", "h2"]
    assert [e.kind for e in batch] == ["start"] * 3
    assert batch[0].payload == start_event(3)
    assert batch[0].destination == HERE
    assert [e.handle for e in sp.next_batch(limit=2)] == ["h3", "h1"]


def test_end_waits_for_its_start_then_carries_the_server_id(sp: Spool) -> None:
    """An end is not deliverable until its start is acknowledged; then it names the server's session."""
    h = start(sp, 1)
    assert sp.append_end(h, HERE, end_event(h))
    (first,) = sp.next_batch()
    assert first.kind == "start"
    assert sp.ack_start(first, "c1-20260101-000000")
    (end,) = sp.next_batch()
    assert end.kind == "end" and end.server_session_id == "c1-20260101-000000"
    assert end.arguments()["session_id"] == "c1-20260101-000000"
    assert end.payload["session_id"] == h  # as spooled
    assert sp.ack_end(end)
    assert sp.next_batch() == []
    assert sp.open_sessions() == []
    assert sp.stats().rows == 0


def test_ack_start_is_one_transaction(sp: Spool, tmp_path: Path) -> None:
    """If recording the mapping fails, the start row stays: never deleted without its mapping."""
    h = start(sp, 1)
    (row,) = sp.next_batch()
    raw = sqlite3.connect(tmp_path / "spool.sqlite3")
    raw.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF server_session_id ON sessions"
        " BEGIN SELECT RAISE(ABORT, 'mapping refused'); END"
    )
    raw.commit()
    with pytest.raises(SpoolError, match="mapping refused"):
        sp.ack_start(row, "srv-1")
    (still,) = sp.next_batch()
    assert still.row_id == row.row_id and still.server_session_id is None
    raw.execute("DROP TRIGGER refuse")
    raw.commit()
    raw.close()
    assert sp.ack_start(row, "srv-1")
    assert sp.next_batch() == []
    (open_session,) = sp.open_sessions()
    assert open_session.handle == h and open_session.server_session_id == "srv-1"


def test_acks_of_vanished_rows_say_so(sp: Spool) -> None:
    """Acknowledging a row twice (or one dropped meanwhile) reports False and changes nothing."""
    h = start(sp, 1)
    (row,) = sp.next_batch()
    assert sp.ack_start(row, "srv-1")
    assert not sp.ack_start(row, "srv-1")
    sp.append_end(h, HERE, end_event(h))
    (end,) = sp.next_batch()
    assert sp.ack_end(end)
    assert not sp.ack_end(end)


def test_a_row_of_an_older_file_never_touches_a_new_row_with_the_same_id(
    sp: Spool, tmp_path: Path, clock: Clock
) -> None:
    """After the spool was moved aside and started afresh, ids begin again: the event id tells them apart."""
    start(sp, 1)
    (old_row,) = sp.next_batch()
    with Spool(tmp_path / "fresh.sqlite3", clock=clock) as fresh:
        start(fresh, 2)
        (new_row,) = fresh.next_batch()
        assert new_row.row_id == old_row.row_id and new_row.event_id != old_row.event_id
        assert not fresh.ack_start(old_row, "srv-1")
        assert not fresh.record_failure(old_row, "boom", clock.now + 5)
        assert not fresh.dead_letter(old_row, "refused")
        (still,) = fresh.next_batch()
        assert (still.event_id, still.attempts, still.last_error) == (new_row.event_id, 0, None)


def test_duplicates_are_ignored(sp: Spool) -> None:
    """The same start (event_id or handle) and a second end for a session are written once."""
    h = start(sp, 1)
    assert not sp.append_start(h, HERE, start_event(1), pid=1, pid_start_time=None, boot_id=None)
    assert not sp.append_start("other", HERE, start_event(1), pid=1, pid_start_time=None, boot_id=None)
    assert [s.handle for s in sp.open_sessions()] == [h]
    assert sp.append_end(h, HERE, end_event(h))
    assert not sp.append_end(h, None, {"session_id": h, "metadata": {"exit_reason": "abnormal"}})
    assert [(e.kind, e.handle) for e in sp.list_pending()] == [("start", "h1"), ("end", "h1")]
    assert sp.list_pending()[1].payload["metadata"] == {"exit_reason": "user_exit"}


def test_end_without_a_known_start_is_counted(sp: Spool) -> None:
    """An end whose start is not in the spool cannot be delivered: it is counted, not kept."""
    assert not sp.append_end("nobody", HERE, end_event("nobody"))
    assert sp.stats().drops == {DROP_NO_START: 1}
    assert sp.list_pending() == []


def test_end_goes_where_its_start_went(sp: Spool) -> None:
    """An end follows its session's destination, even when the shell's settings changed meanwhile."""
    h = start(sp, 1, HERE)
    sp.append_end(h, THERE, end_event(h))
    assert {e.destination_key for e in sp.list_pending()} == {HERE.key}


def test_refused_start_takes_its_end_to_dead_letters(sp: Spool) -> None:
    """A refused start buries its pending end, and an end spooled later goes straight to dead letters."""
    a, b = start(sp, 1), start(sp, 2)
    sp.append_end(a, HERE, end_event(a))
    first, second = sp.next_batch()
    assert sp.dead_letter(first, "Path does not exist: /x")
    assert sp.dead_letter(second, "Authentication failed", category=DEAD_AUTH)
    sp.append_end(b, HERE, end_event(b))
    assert sp.next_batch() == []
    dead = {(e.handle, e.kind): e for e in sp.list_dead()}
    assert dead[(a, "start")].dead_reason == "Path does not exist: /x"
    assert dead[(a, "start")].dead_category == "rejected"
    assert dead[(a, "start")].attempts == 1
    assert dead[(a, "end")].dead_category == DEAD_START_REFUSED
    assert dead[(a, "end")].dead_reason == "start refused: Path does not exist: /x"
    assert dead[(b, "end")].dead_category == DEAD_START_REFUSED
    assert "Authentication failed" in (dead[(b, "end")].dead_reason or "")
    assert sp.stats().dead == 4 and sp.stats().depth == 0


def test_requeue_by_category_brings_ends_back_with_their_start(sp: Spool, clock: Clock) -> None:
    """After the token changes, auth dead letters (and the ends that followed them) are pending again."""
    a, b = start(sp, 1), start(sp, 2)
    sp.append_end(a, HERE, end_event(a))
    sp.append_end(b, HERE, end_event(b))
    row_a, row_b = sp.next_batch()
    sp.dead_letter(row_a, "Authentication failed", category=DEAD_AUTH)
    sp.dead_letter(row_b, "bad component name")
    assert sp.requeue_dead(DEAD_START_REFUSED) == 0  # never ahead of a start still dead
    clock.now += 50
    assert sp.requeue_dead(DEAD_AUTH) == 2
    pending = sp.list_pending()
    assert [(e.handle, e.kind) for e in pending] == [(a, "start"), (a, "end")]
    assert all(e.attempts == 0 and e.next_attempt_at == clock.now for e in pending)
    assert [(e.handle, e.kind) for e in sp.list_dead()] == [(b, "start"), (b, "end")]
    assert sp.requeue_dead() == 2
    assert sp.list_dead() == []


def test_transient_failure_waits_until_next_attempt(sp: Spool, clock: Clock) -> None:
    """A transient failure counts an attempt and keeps the row out of batches until it is due."""
    start(sp, 1)
    (row,) = sp.next_batch()
    assert sp.record_failure(row, "server unavailable: exited with 1", clock.now + 30)
    assert sp.next_batch() == []
    assert [e.handle for e in sp.next_batch(now=clock.now + 30)] == ["h1"]
    clock.now += 30
    (again,) = sp.next_batch()
    assert again.attempts == 1 and again.last_error == "server unavailable: exited with 1"
    assert not sp.record_failure(again._replace(row_id=999), "gone meanwhile", 0)


def test_long_errors_are_clipped(sp: Spool) -> None:
    """Server messages are stored, but not unbounded."""
    start(sp, 1)
    (row,) = sp.next_batch()
    sp.dead_letter(row, "x" * 50_000)
    (dead,) = sp.list_dead()
    assert dead.dead_reason is not None and len(dead.dead_reason) == 2000


def test_batches_per_destination(sp: Spool, clock: Clock) -> None:
    """Each destination's rows can be taken on their own; destinations are listed oldest first."""
    start(sp, 1, THERE)
    clock.now += 1
    start(sp, 2, HERE)
    start(sp, 3, THERE)
    assert [d.key for d in sp.pending_destinations()] == [THERE.key, HERE.key]
    assert [e.handle for e in sp.next_batch(destination_key=THERE.key)] == ["h1", "h3"]
    assert [e.handle for e in sp.next_batch(destination_key=HERE.key)] == ["h2"]


def test_destination_keeps_its_latest_tuning(sp: Spool) -> None:
    """The stored destination is the full one, with the tuning of its latest append."""
    start(sp, 1)
    tuned = Destination(command="srv", args=("--here",), tuning=Tuning(attempts=7))
    assert tuned.key == HERE.key
    sp.append_start("h2", tuned, start_event(2), pid=None, pid_start_time=None, boot_id=None)
    stored = sp.destination(HERE.key)
    assert stored is not None and stored.tuning.attempts == 7
    assert sp.destination("unknown") is None


def test_retarget_moves_what_was_not_delivered(sp: Spool, clock: Clock) -> None:
    """Replay to the destination configured now: starts and unacknowledged ends move; an end
    whose start the old server acknowledged stays with that server."""
    acked, waiting, refused = start(sp, 1), start(sp, 2), start(sp, 3)
    for h in (acked, waiting):
        sp.append_end(h, HERE, end_event(h))
    rows = {e.handle: e for e in sp.next_batch()}
    sp.ack_start(rows[acked], "srv-1")
    sp.record_failure(rows[waiting], "down", clock.now + 3600)
    sp.dead_letter(rows[refused], "Path does not exist")
    clock.now += 5
    assert sp.retarget(HERE.key, THERE) == 3  # waiting start + end, refused start
    assert sp.retarget(HERE.key, THERE) == 0
    by = {(e.handle, e.kind): e for e in [*sp.list_pending(), *sp.list_dead()]}
    assert by[(acked, "end")].destination_key == HERE.key
    assert by[(waiting, "start")].destination_key == THERE.key
    assert by[(waiting, "start")].next_attempt_at == clock.now  # due now
    assert by[(waiting, "end")].destination_key == THERE.key
    assert by[(refused, "start")].destination_key == THERE.key
    assert by[(refused, "start")].state == "dead"
    assert sp.destination(THERE.key) == THERE
    sessions = {s.handle: s.destination_key for s in sp.open_sessions()}
    assert sessions == {refused: THERE.key}
    # None: from wherever they were.
    assert sp.retarget(None, HERE) == 3
    assert {e.destination_key for e in sp.list_pending() if e.handle == waiting} == {HERE.key}


def test_open_sessions_and_liveness(sp: Spool, clock: Clock) -> None:
    """Sessions without a spooled end are listed with their process identity; liveness is recorded."""
    a = start(sp, 1)
    clock.now += 10
    b = start(sp, 2)
    sp.append_end(b, HERE, end_event(b))
    (s,) = sp.open_sessions()
    assert (s.handle, s.pid, s.pid_start_time, s.boot_id) == (a, 101, 5001, "boot")
    assert s.started_at == s.last_seen_alive == clock.now - 10
    assert sp.mark_alive(a, clock.now + 100) == 1
    assert sp.mark_alive(a, clock.now) == 1  # an older sighting does not move it backwards
    assert sp.open_sessions()[0].last_seen_alive == clock.now + 100
    c = start(sp, 3)
    assert sp.mark_alive([a, c, "unknown"], clock.now + 200) == 2
    assert {s.last_seen_alive for s in sp.open_sessions()} == {clock.now + 200}
    assert sp.mark_alive("unknown") == 0


def test_meta_values(sp: Spool) -> None:
    """A small key/value store for the agent (pid, breaker state)."""
    assert sp.meta_get("agent_pid") is None
    sp.meta_set("agent_pid", "4242")
    sp.meta_set("agent_pid", "4243")
    assert sp.meta_get("agent_pid") == "4243"
    sp.meta_set("agent_pid", None)
    assert sp.meta_get("agent_pid") is None


def test_stats(sp: Spool, clock: Clock) -> None:
    """Depth, oldest pending age, dead letters, size and open sessions."""
    empty = sp.stats()
    assert (empty.depth, empty.oldest_pending_age_seconds, empty.dead, empty.rows, empty.bytes) == (
        0,
        None,
        0,
        0,
        0,
    )
    a = start(sp, 1)
    clock.now += 7
    start(sp, 2)
    sp.append_end(a, HERE, end_event(a))
    sp.dead_letter(sp.next_batch()[1], "no")
    clock.now += 3
    st = sp.stats()
    assert st.depth == 2 and st.dead == 1 and st.rows == 3 and st.open_sessions == 1
    assert st.oldest_pending_age_seconds == 10
    assert st.bytes == sum(len(encode(e.payload).encode()) for e in sp.list_pending() + sp.list_dead())
    assert st.drops == {} and st.moved_aside is None


def test_reopens_after_close(sp: Spool) -> None:
    """close() is idempotent and the spool opens again on the next call."""
    start(sp, 1)
    sp.close()
    sp.close()
    assert [e.handle for e in sp.list_pending()] == ["h1"]


def test_unencodable_event_is_a_spool_error(sp: Spool) -> None:
    """An event that cannot be written as JSON is a SpoolError (the provider counts it), nothing else."""
    looped: dict[str, object] = {"event_id": "x"}
    looped["self"] = looped
    with pytest.raises(SpoolError, match="cannot be spooled"):
        sp.append_start("h1", HERE, looped, pid=None, pid_start_time=None, boot_id=None)
    assert sp.open_sessions() == [] and sp.list_pending() == []


def test_start_without_event_id_still_spools(sp: Spool) -> None:
    """A start is spooled even if its builder left out the event id."""
    assert sp.append_start(
        "h9", HERE, {"event_type": "session_start"}, pid=None, pid_start_time=None, boot_id=None
    )
    assert sp.list_pending()[0].event_id == "start:h9"


def test_all_names_exist() -> None:
    """__all__ is honest."""
    for name in spool_module.__all__:
        assert hasattr(spool_module, name), name


def test_import_is_light() -> None:
    """The shell pays for the standard library only: no pydantic, no mcp, no platformdirs."""
    code = (
        "import sys, oneiric_session.spool, oneiric_session.tracking.procinfo\n"
        "heavy = {'pydantic', 'mcp', 'platformdirs', 'yaml', 'tenacity', 'anyio'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shell_appends_are_fsynced_and_the_agents_bookkeeping_is_not(tmp_path: Path) -> None:
    """Shells commit with synchronous=FULL; the agent's view (acks, dead letters) with NORMAL."""
    from oneiric_session.agent import uncapped_spool

    path = tmp_path / "spool.sqlite3"

    def pragma(spool: Spool, name: str) -> object:
        with spool.reading() as conn:
            return conn.execute(f"PRAGMA {name}").fetchone()[0]

    def synchronous(spool: Spool) -> object:
        return pragma(spool, "synchronous")

    with Spool(path) as shell, uncapped_spool(path) as agent:
        assert synchronous(shell) == 2  # FULL
        assert synchronous(agent) == 1  # NORMAL
        assert pragma(agent, "journal_mode") == "wal"


def test_the_row_states_are_the_ones_the_schema_allows() -> None:
    from oneiric_session.spool import schema
    from oneiric_session.spool.records import STATE_DEAD, STATE_PENDING

    assert f"DEFAULT '{STATE_PENDING}' CHECK (state IN ('{STATE_PENDING}', '{STATE_DEAD}'))" in schema._SCHEMA
