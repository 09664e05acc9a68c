"""The bundled server's group commit: concurrent writes share a transaction, each keeps its own outcome.

The real store on a real SQLite file, and real tool-call tasks on one event loop; the first
transaction is held open until the others queued, so the batching is observed, not hoped for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from oneiric_session.server.group_commit import GroupCommit
from oneiric_session.server.store import NewSession, SessionStore

WRITERS = 16


def _session(n: int) -> NewSession:
    return NewSession(
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        base_session_id="demo-20261206-120000",
        component_name="demo",
        shell_type="TestShell",
        hostname="h",
        pid=n + 1,
        user={"username": "u", "home": "/home/u"},
        environment={"python_version": "3", "platform": "linux", "cwd": "/"},
        started_at="2026-12-06T12:00:00Z",
        metadata={},
    )


class CountingStore:
    """The real store, its transactions counted; the first one waits until `release` is set."""

    def __init__(self, path: Path) -> None:
        self.store = SessionStore(path)
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def commit(self, works: Sequence[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        self.batches.append(len(works))
        self.entered.set()
        if len(self.batches) == 1:
            assert self.release.wait(10)
        return self.store.commit(works)


def _refused(db: sqlite3.Connection) -> str:
    db.execute("UPDATE sessions SET shell_type = 'changed'")  # undone with its savepoint, nobody else's
    raise ValueError("refused")


async def test_writes_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    counting = CountingStore(tmp_path / "sessions.sqlite3")
    commits = GroupCommit(counting.commit)
    first = asyncio.create_task(commits.run(counting.store.start_work(_session(0))))
    assert await asyncio.to_thread(counting.entered.wait, 10)
    works: list[Callable[[Any], Any]] = [counting.store.start_work(_session(n)) for n in range(1, WRITERS)]
    works[6] = _refused
    others = [asyncio.create_task(commits.run(work)) for work in works]
    while len(commits._queue) < WRITERS - 1:  # every task queues its write behind the first commit
        await asyncio.sleep(0)
    counting.release.set()
    results = await asyncio.gather(first, *others, return_exceptions=True)

    assert counting.batches == [1, WRITERS - 1]  # the first alone, then all the others together
    assert isinstance(results.pop(7), ValueError)
    assert results == ["demo-20261206-120000", *(f"demo-20261206-120000-{n}" for n in range(2, WRITERS))]
    rows = counting.store.list_sessions()
    assert len(rows) == WRITERS - 1 and {r["shell_type"] for r in rows} == {"TestShell"}


async def test_a_failed_commit_fails_every_write_of_its_batch(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.sqlite3")

    def broken(works: Sequence[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        raise sqlite3.OperationalError("disk I/O error")

    commits = GroupCommit(broken)
    results = await asyncio.gather(
        *(commits.run(store.start_work(_session(n))) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert store.list_sessions() == []
    with pytest.raises(ValueError, match="refused"):
        await GroupCommit(store.commit).run(_refused)
