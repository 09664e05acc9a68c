"""The agent's side of the spool: what is due and what became of it, the sessions it watches, its claim.

`DeliveryQueue` is what the delivery agent reads and writes: `DueRows` (spool/due.py: what to
send now, when to look again) and `RowOutcomes` (spool/outcomes.py: acknowledgements, failures,
dead letters) under one connection, and here the sessions the agent watches for their shells'
exit and its claim to be the spool's one deliverer. The command line reads the open sessions
too (`who`). Standard library only (a shell only writes its outbox: spool/outbox.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from oneiric_session.spool.due import DueRows
from oneiric_session.spool.outcomes import RowOutcomes
from oneiric_session.spool.records import OpenSession

__all__ = ["DeliveryQueue"]

# The meta key of the deliverer's claim (its pid, start time, boot id): see claim_agent.
_META_OWNER = "agent.owner"


class DeliveryQueue(DueRows, RowOutcomes):
    """What the delivery agent reads and writes; `Spool` adds the appends and the totals."""

    def open_sessions(self) -> list[OpenSession]:
        """Sessions whose end is not spooled yet (for watching their pids), oldest first."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT handle, destination_key, server_session_id, pid, pid_start_time, boot_id,"
                " started_at, last_seen_alive, host, pid_ns FROM sessions WHERE end_spooled = 0"
                " ORDER BY started_at"
            ).fetchall()
        return [OpenSession(*r) for r in rows]

    def mark_alive(self, handles: str | Iterable[str], now: float | None = None) -> int:
        """Record that these sessions' processes were seen alive at `now` (clock time), in one
        transaction; returns how many sessions were found. Never moves a sighting backwards."""
        when = self._clock() if now is None else now
        names = [handles] if isinstance(handles, str) else list(handles)
        with self.transaction() as conn:
            return sum(
                conn.execute(
                    "UPDATE sessions SET last_seen_alive = MAX(last_seen_alive, ?) WHERE handle = ?",
                    (when, handle),
                ).rowcount
                for handle in names
            )

    def claim_agent(self, owner: str, alive: Callable[[str], bool]) -> bool:
        """Record `owner` as this spool's one deliverer, unless a live one (`alive(its claim)`) is there.

        The claim lives in the spool itself, so it is found whatever name the spool is opened by and
        survives the lock file being deleted (see `wakeup.AgentLock`).
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_META_OWNER,)).fetchone()
            if row is not None and row[0] != owner and alive(row[0]):
                return False
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_META_OWNER, owner),
            )
            return True

    def release_agent(self, owner: str) -> None:
        """Drop `owner`'s claim (only its own)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ? AND value = ?", (_META_OWNER, owner))
