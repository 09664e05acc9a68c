"""The spool's one way to write: BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

IMMEDIATE takes SQLite's write lock at the start, so a writer waits (busy_timeout) before it
has read anything, never half way. Used by every write: `SpoolConnection.transaction` (the
appends, the shells' records taken in, the agent's bookkeeping), the schema's creation and growth,
and a rejoin's merge. Standard library only.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

__all__ = ["committed", "immediate", "started"]


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on `conn` (opened with isolation_level=None) around the block."""
    conn.execute("BEGIN IMMEDIATE")
    with committed(conn):
        yield


@contextlib.contextmanager
def committed(conn: sqlite3.Connection) -> Iterator[None]:
    """The transaction begun on `conn` ends with the block: committed, or rolled back on any error."""
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def started(conn: sqlite3.Connection, *, restore: str | None = None) -> sqlite3.Connection:
    """`conn` in a write transaction begun now (BEGIN IMMEDIATE).

    `restore`: the transaction's commit is flushed (synchronous=FULL, which cannot change inside it);
    `restore` is the connection's own setting, put back here if the transaction cannot begin and by
    the caller after it ended.
    """
    if restore is not None:
        conn.execute("PRAGMA synchronous = FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except BaseException:
        if restore is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA synchronous = {restore}")
        raise
    return conn
