"""The bundled server's store under a burst of starts in one second (a backlog, a fleet)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from oneiric_session.server.store import SessionStore
from tests.test_server_store import new_session


def test_a_burst_in_one_second_costs_a_few_queries_per_start_not_one_per_session(tmp_path: Path) -> None:
    """The 300th start of one component in one second probes one or two ids, not 300 (was quadratic)."""
    store = SessionStore(tmp_path / "s.sqlite3")
    try:
        for n in range(299):
            store.record_start(new_session(f"e{n}"))
        probes: list[str] = []
        probe = "SELECT 1 FROM sessions WHERE session_id"
        store._db.set_trace_callback(lambda sql: probes.append(sql) if sql.startswith(probe) else None)
        assert store.record_start(new_session("e299")) == "shell-20260206-123456-300"
        assert len(probes) <= 3
    finally:
        store.close()


def test_ids_taken_by_another_server_process_are_skipped(tmp_path: Path) -> None:
    """Two stores (server processes) on one database keep every id distinct and suffixes dense."""
    first, second = SessionStore(tmp_path / "s.sqlite3"), SessionStore(tmp_path / "s.sqlite3")
    try:
        ids = [first.record_start(new_session("a")), first.record_start(new_session("b"))]
        ids += [second.record_start(new_session("c")), first.record_start(new_session("d"))]
        other = replace(new_session("x"), base_session_id="other-20260206-123456")
        ids.append(first.record_start(other))
        base = "shell-20260206-123456"
        assert ids == [base, f"{base}-2", f"{base}-3", f"{base}-4", "other-20260206-123456"]
    finally:
        first.close()
        second.close()
