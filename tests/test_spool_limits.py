"""The spool stays bounded by rows, bytes and age; drops take the oldest first, a start with its end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session.spool import DROP_MAX_AGE, DROP_MAX_BYTES, DROP_MAX_ROWS, DROP_NO_START, Spool
from oneiric_session.tracking.destination import Destination

DEST = Destination(command="srv")
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator:
    spools: list[Spool] = []

    def make_spool(**caps: float) -> Spool:
        sp = Spool(tmp_path / "spool.sqlite3", clock=clock, **caps)
        spools.append(sp)
        return sp

    yield make_spool
    for sp in spools:
        sp.close()


def start(sp: Spool, handle: str, filler: str = "") -> bool:
    event = {"event_id": f"id-{handle}", "event_type": "session_start", "metadata": {"filler": filler}}
    return sp.append_start(handle, DEST, event, pid=1, pid_start_time=None, boot_id=None)


def end(sp: Spool, handle: str) -> bool:
    return sp.append_end(handle, DEST, {"session_id": handle, "event_type": "session_end"})


def rows(sp: Spool) -> list[tuple[str, str]]:
    return [(e.handle, e.kind) for e in sp.list_pending() + sp.list_dead()]


def test_row_cap_drops_the_oldest(make) -> None:
    """Past max_rows the oldest rows go, counted as max_rows."""
    sp = make(max_rows=3)
    for h in ("a", "b", "c", "d", "e"):
        start(sp, h)
    assert rows(sp) == [("c", "start"), ("d", "start"), ("e", "start")]
    assert sp.stats().drops == {DROP_MAX_ROWS: 2}
    assert sp.stats().rows == 3


def test_dropping_a_start_drops_its_end(make) -> None:
    """An end whose start was dropped could never be delivered: it goes with it, and a later end
    of that session is counted instead of kept."""
    sp = make(max_rows=3)
    start(sp, "a")
    start(sp, "b")
    end(sp, "b")
    start(sp, "c")  # 4 rows: "a" goes
    assert rows(sp) == [("b", "start"), ("b", "end"), ("c", "start")]
    end(sp, "c")  # 4 rows: "b" start goes, and its end with it
    assert rows(sp) == [("c", "start"), ("c", "end")]
    assert sp.stats().drops == {DROP_MAX_ROWS: 3}
    assert not end(sp, "a")  # the shell of "a" ends later: nothing to end
    assert sp.stats().drops == {DROP_MAX_ROWS: 3, DROP_NO_START: 1}
    assert [s.handle for s in sp.open_sessions()] == []


def test_the_end_of_a_delivered_start_is_never_dropped(make) -> None:
    """An end whose start reached the server is what closes that session there: a cap never drops
    it (hardening item 12); the oldest session still wholly in the spool goes instead."""
    sp = make(max_rows=2)
    start(sp, "a")
    (row,) = sp.next_batch()
    sp.ack_start(row, "srv-a")
    end(sp, "a")
    start(sp, "b")
    start(sp, "c")
    assert rows(sp) == [("a", "end"), ("c", "start")]
    assert {s.handle for s in sp.open_sessions()} == {"c"}
    assert sp.stats().dropped_sessions == {DROP_MAX_ROWS: 1}


def test_delivered_open_session_survives_drops_of_others(make) -> None:
    """A session the server knows, with its end still to come, stays listed for the agent."""
    sp = make(max_rows=1)
    start(sp, "a")
    sp.ack_start(sp.next_batch()[0], "srv-a")
    start(sp, "b")
    start(sp, "c")
    assert rows(sp) == [("c", "start")]
    assert {s.handle for s in sp.open_sessions()} == {"a", "c"}
    assert end(sp, "a")
    assert rows(sp) == [("a", "end")]
    assert sp.next_batch()[0].server_session_id == "srv-a"


def test_byte_cap_drops_the_oldest(make) -> None:
    """Past max_bytes the oldest rows go until the payloads fit, counted as max_bytes."""
    sp = make(max_bytes=65536)
    for h in "abcdefgh":
        start(sp, h, filler="x" * 10_000)
    kept = rows(sp)
    assert kept == [(h, "start") for h in "cdefgh"]
    st = sp.stats()
    assert st.bytes <= 65536 and st.drops == {DROP_MAX_BYTES: 2}


def test_age_cap_drops_old_rows(make, clock: Clock) -> None:
    """Rows older than max_age_seconds go at the next append, or when the agent enforces the caps."""
    sp = make(max_age_seconds=30 * DAY)
    start(sp, "old")
    end(sp, "old")
    clock.now += 20 * DAY
    start(sp, "young")
    clock.now += 11 * DAY
    start(sp, "new")
    assert rows(sp) == [("young", "start"), ("new", "start")]
    assert sp.stats().drops == {DROP_MAX_AGE: 2}
    end(sp, "young")  # an open session never ages out (hardening item 9): it does once ended
    clock.now += 31 * DAY
    assert sp.enforce_limits() == {DROP_MAX_AGE: 2}  # "young" whole; "new" is still open
    assert rows(sp) == [("new", "start")]
    assert sp.enforce_limits() == {}


def test_dead_letters_count_against_the_caps(make) -> None:
    """Dead letters are bounded like everything else (oldest first)."""
    sp = make(max_rows=2)
    start(sp, "a")
    sp.dead_letter(sp.next_batch()[0], "refused")
    start(sp, "b")
    start(sp, "c")
    assert rows(sp) == [("b", "start"), ("c", "start")]
    assert sp.stats().dead == 0
