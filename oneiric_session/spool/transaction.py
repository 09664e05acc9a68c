"""The spool's one way to write: BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

IMMEDIATE takes SQLite's write lock at the start, so a writer waits (busy_timeout) before it
has read anything, never half way. Used by every write: the appends (the shells' records taken
in) and the agent's
bookkeeping (`SpoolConnection._write`), the schema's creation and growth, and a rejoin's merge.
Standard library only.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

__all__ = ["immediate"]


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on `conn` (opened with isolation_level=None) around the block."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
