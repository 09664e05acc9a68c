"""Group commit for the bundled server's store: concurrent writes share one transaction and one fsync.

Every acknowledged start or end must be on disk before the server answers (the client deletes
its spooled copy then), so each write commits with `synchronous=FULL`: one fsync, about a
millisecond or more. A client with several calls in flight (the agent's window) or many hosts at
once would each wait for their own. Here the tool calls of the event loop queue their writes; one
committer task takes every write queued by then and hands them to a worker thread as one batch
(`SessionStore.commit`: one `BEGIN IMMEDIATE` transaction, each write in its own savepoint so
one that fails is undone alone, one commit); writes queued meanwhile form the next batch. A lone
write costs what it cost before, and a batch costs one hop to a thread, not one per call.
Nobody is answered before the commit that holds its write. A caller that is cancelled stops
waiting; its write, already queued, is committed all the same (the client sends it again, and
the store is idempotent on event_id).
"""

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio.to_thread

__all__ = ["GroupCommit"]

T = TypeVar("T")

# Writes taken into one transaction at most: a bound on the time any one caller waits.
MAX_BATCH = 256

Work = Callable[[Any], Any]
# Runs the works in one transaction; per work, (True, its result) or (False, its exception).
Commit = Callable[[Sequence[Work]], list[tuple[bool, Any]]]


class GroupCommit:
    """Batches the writes of concurrent tool calls on one event loop (see the module doc)."""

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._queue: list[tuple[Work, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[Any], T]) -> T:
        """`work(connection)`'s result once it is committed; its exception, or the commit's, otherwise."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_all(), name="group-commit")
            self._committer.add_done_callback(self._ended)
        return await done

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A committer cancelled before it ran never reached its `finally`: the next write starts one."""
        if self._committer is task:
            self._committer = None

    async def _commit_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    outcomes = await anyio.to_thread.run_sync(
                        functools.partial(self._commit, [work for work, _ in batch])
                    )
                except asyncio.CancelledError:  # the server is stopping: nobody is answered
                    for _, done in [*batch, *self._queue]:
                        done.cancel()
                    raise
                except Exception as exc:  # the transaction or its commit failed: nothing of it holds
                    outcomes = [(False, exc)] * len(batch)
                for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)
        finally:
            # In the same step as the last look at the queue: a write queued after it starts a new one.
            self._committer = None
