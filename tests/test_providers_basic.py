"""The `noop` and `memory` providers behind the shell-side Tracker interface."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from oneiric_session.tracking.providers import memory, noop
from oneiric_session.tracking.providers.memory import MemoryTracker, SessionLog
from oneiric_session.tracking.tracker import Tracker


class StepClock:
    """A wall clock that advances 1.5 s per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1.5)
        return self.now


def test_both_implement_the_tracker_interface() -> None:
    assert isinstance(noop.create(None), Tracker)
    assert isinstance(memory.create(None), Tracker)


def test_noop_records_nothing_and_stays_healthy() -> None:
    tracker = noop.NoopTracker()
    assert tracker.start(component_name="c", shell_type="S") is None
    assert tracker.end("anything") is False
    tracker.close()
    tracker.close()
    assert tracker.health() is True


def test_memory_records_a_session() -> None:
    clock = StepClock()
    tracker = MemoryTracker(clock=clock)
    handle = tracker.start(component_name="shell", shell_type="AdminShell", metadata={"v": 1})
    assert handle is not None
    assert tracker.end(handle, exit_reason="signal", duration_seconds=9.0, metadata={"n": 2}) is True
    (session,) = tracker.sessions
    assert (session.handle, session.component_name, session.shell_type) == (handle, "shell", "AdminShell")
    assert (session.metadata, session.end_metadata) == ({"v": 1}, {"n": 2})
    assert session.ended_at - session.started_at == timedelta(seconds=1.5)
    assert (session.exit_reason, session.duration_seconds) == ("signal", 9.0)


def test_memory_fills_duration_when_the_host_did_not_measure_it() -> None:
    tracker = MemoryTracker(clock=StepClock())
    handle = tracker.start(component_name="c", shell_type="S")
    tracker.end(handle)
    assert (tracker.get(handle).duration_seconds, tracker.get(handle).exit_reason) == (1.5, "user_exit")


def test_memory_refuses_unknown_and_repeated_ends() -> None:
    tracker = MemoryTracker()
    handle = tracker.start(component_name="c", shell_type="S")
    assert tracker.end("memory-999") is False
    assert tracker.end(handle) is True
    assert tracker.end(handle, exit_reason="again") is False
    assert tracker.get(handle).exit_reason == "user_exit"


def test_memory_query_helpers() -> None:
    tracker = MemoryTracker()
    a = tracker.start(component_name="a", shell_type="S")
    tracker.start(component_name="b", shell_type="S")
    tracker.end(a)
    assert [s.component_name for s in tracker.open_sessions()] == ["b"]
    assert [s.component_name for s in tracker.ended_sessions()] == ["a"]
    assert [s.handle for s in tracker.for_component("a")] == [a]
    assert tracker.get("nope") is None
    tracker.clear()
    assert tracker.sessions == []


def test_memory_copies_metadata_and_never_raises_on_odd_input() -> None:
    tracker = MemoryTracker()
    metadata = {"k": "v"}
    handle = tracker.start(component_name="c", shell_type="S", metadata=metadata)
    metadata["k"] = "changed"
    assert tracker.get(handle).metadata == {"k": "v"}
    assert tracker.start(component_name="c", shell_type="S", metadata=["not", "a", "mapping"]) is not None


def test_memory_after_close() -> None:
    tracker = MemoryTracker()
    handle = tracker.start(component_name="c", shell_type="S")
    tracker.close()
    assert tracker.health() is False
    assert tracker.start(component_name="c", shell_type="S") is None
    assert tracker.end(handle) is False


def test_trackers_from_the_factory_share_one_log() -> None:
    memory.SHARED_LOG.clear()
    first, second = memory.create(None), memory.create(None)
    handle = first.start(component_name="c", shell_type="S")
    assert second.end(handle) is True
    assert [s.ended for s in MemoryTracker(memory.SHARED_LOG).sessions] == [True]
    memory.SHARED_LOG.clear()


def test_log_is_safe_across_threads() -> None:
    """Ends may arrive from an atexit daemon thread while other threads start sessions."""
    tracker = MemoryTracker(SessionLog())

    def work() -> None:
        for _ in range(200):
            tracker.end(tracker.start(component_name="c", shell_type="S"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({s.handle for s in tracker.ended_sessions()}) == 800
