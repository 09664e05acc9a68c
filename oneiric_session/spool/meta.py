"""The spool's small key-value table (meta): recovery records in it where a corrupt file went, the
agent its pid and what it rejoined, for `status` to read back. Standard library only."""

from __future__ import annotations

from oneiric_session.spool.connection import SpoolConnection

__all__ = ["MetaTable"]


class MetaTable(SpoolConnection):
    """The spool's connection with its meta table."""

    def meta_get(self, key: str) -> str | None:
        """The value stored under `key` (None: none)."""
        with self.reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str | None) -> None:
        """Store a small value (None deletes it), e.g. the agent's pid."""
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
