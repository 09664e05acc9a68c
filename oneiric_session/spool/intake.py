"""Events entering the spool's database: the two appends, the caps they apply, the shells' outbox
taken in, and the totals.

A shell writes its records to the outbox (`spool/outbox.py`); the agent takes them in here
(`Intake.take_in`), each as the append the shell would once have made itself, with that
shell's caps, in one transaction for all the records found. The agent also appends here
itself (the "abnormal" end of a shell that died), and so do the tests.

Taking in is exactly once, whatever is killed when: the names taken in are recorded in the
same transaction (table `taken`), and their files stay until `release_taken` has flushed the
spool to disk (one write committed with an fsync, even on the agent's unsynced connection,
for every record taken in since), deleted the files and flushed their directory; a name is
forgotten only once its file is gone. So each record costs the agent no fsync of its own,
and a power loss before the release finds the files again (taken in again, their rows sent
again: the agent's own acknowledgements are not flushed either, see `spool`).

A record that cannot be read (not ours, not private, not a record of this format) is left
where it is and named in the log once; one still being written (no final newline) is left for
the next look, and deleted once a minute old (its shell died writing it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Collection, Mapping
from typing import Any

from oneiric_session.common.safetext import terminal_safe
from oneiric_session.errors import SpoolError
from oneiric_session.spool.meta import MetaTable
from oneiric_session.spool.outbox import StartAppender, encode, outbox_dir, outbox_problem, sync_directory
from oneiric_session.spool.outbox_reader import (
    KINDS,
    STALE_UNFINISHED_SECONDS,
    UNREADABLE,
    OutboxRecord,
    Unfinished,
    load_record,
    open_sessions,
    read_outbox,
    record_names,
    remove_if_abandoned,
)
from oneiric_session.spool.records import (
    SESSION_DROPS_PREFIX,
    STATE_DEAD,
    STATE_PENDING,
    SpoolStats,
)
from oneiric_session.spool.recovery import is_corruption, is_lost_wal
from oneiric_session.spool.retention import enforce
from oneiric_session.spool.rows import insert_end, insert_start
from oneiric_session.tracking.destination import Destination

__all__ = ["Intake"]

logger = logging.getLogger("oneiric_session.spool")

# When the outbox's files were last released (`release_taken`): a write that flushes the spool.
_META_RELEASED = "outbox.released"


class Intake(MetaTable, StartAppender):
    """The spool at `path`: appends, the outbox taken in, the totals. Thread-safe.

    Every public method raises only SpoolError (after recovery from corruption was tried).
    """

    def _start(
        self, handle: str, destination: Destination, event: Mapping[str, Any], shell: dict[str, Any]
    ) -> bool:
        payload = encode(event)
        event_id = str(event.get("event_id") or f"start:{handle}")

        with self.transaction() as conn:
            now = self._clock()
            written = insert_start(conn, handle, event_id, destination, payload, shell, now)
            self._enforce(conn, now)
            return written

    def append_end(self, handle: str, destination: Destination | None, event: Mapping[str, Any]) -> bool:
        """Spool a session end durably; it goes where its start went (`destination` is a fallback).

        False if the end was already spooled, or its start is unknown here (dropped, never
        spooled): that loss is counted as "no_start".
        """
        payload = encode(event)

        with self.transaction() as conn:
            now = self._clock()
            written = insert_end(conn, handle, destination, payload, now)
            self._enforce(conn, now)
            return written

    def take_in(self, *, sending: Collection[str] = frozenset()) -> int:
        """Append the shells' new records to the spool, in one transaction; how many.

        Not flushed to disk yet, and their files stay: `release_taken` flushes and deletes them,
        for many records at once (see the module doc). Each record's caps spare the sessions the
        agent is `sending` (`retention.enforce`).
        """
        directory = self._outbox()
        names = _names(directory)
        if names is None:
            return 0
        present = set(names)
        known = self._taken_names()
        waiting: set[str] = set()  # not taken at this look: unfinished, unreadable or refused
        records = [
            record
            for record in (self._read_record(directory, name, waiting) for name in names if name not in known)
            if record is not None
        ]
        # An end waits while its start could not be taken at this look (being written, an error
        # that may pass, or left where it is until someone sees to it): taken alone, it would find
        # no session and be lost. For a while only: a start that never reads keeps its end from nobody.
        held = {name.removesuffix(".start") for name in waiting if name.endswith(".start")}
        now = self._clock()
        records = [
            r
            for r in records
            if not (r.kind == "end" and r.handle in held and now - r.created_at < STALE_UNFINISHED_SECONDS)
        ]
        if not records and not known - present:
            return 0
        # Oldest first, as the shells' own appends once were; a session's end never before its
        # start, whatever the wall clock did between the two.
        starts = {r.handle: r.created_at for r in records if r.kind == "start"}

        def when(record: OutboxRecord) -> tuple[float, int]:
            at = max(record.created_at, starts.get(record.handle, record.created_at))
            return at, KINDS.index(record.kind)

        records.sort(key=when)

        with self.transaction() as conn:
            known = {row[0] for row in conn.execute("SELECT name FROM taken")}  # again, under the lock
            conn.executemany("DELETE FROM taken WHERE name = ?", [(name,) for name in known - present])
            taken = 0
            for record in records:
                if record.name not in known and self._take_alone(conn, record, sending):
                    conn.execute("INSERT INTO taken (name) VALUES (?)", (record.name,))
                    taken += 1
            return taken

    def release_taken(self) -> int:
        """Flush the spool to disk, then delete the outbox files of the records it holds; how many."""
        directory = self._outbox()
        present = set(_names(directory) or ())
        if not present:
            return 0

        with self.transaction(sync=True) as conn:
            # Read with the write, in it: after a corrupt spool was replaced, the fresh one holds none.
            taken = [row[0] for row in conn.execute("SELECT name FROM taken") if row[0] in present]
            if taken:  # a write committed with an fsync: every commit before it is on disk
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_META_RELEASED, repr(self._clock())),
                )
        for name in taken:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SpoolError(f"outbox {directory}: {exc.strerror or exc}") from exc
        if taken:
            with contextlib.suppress(OSError):
                sync_directory(directory)
        return len(taken)

    def _take_alone(self, conn: sqlite3.Connection, record: OutboxRecord, sending: Collection[str]) -> bool:
        """`_take` in its own savepoint: a record the database refuses is left out (and said once)."""
        conn.execute("SAVEPOINT record")
        try:
            _take(conn, record, sending, self._clock())
        except sqlite3.Error as exc:
            # The spool's own trouble: recovery; or SQLite ended the whole transaction itself (a
            # full disk): no savepoint is left to roll back to, and no record here is at fault.
            if is_corruption(exc) or is_lost_wal(exc) or not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO record")
            conn.execute("RELEASE record")
            self._report(record.name, f"the spool refused it: {exc}")
            return False
        conn.execute("RELEASE record")
        return True

    def _outbox(self) -> str:
        """The outbox directory; SpoolError when another user could have written it."""
        directory = outbox_dir(self.path)
        problem = outbox_problem(directory)
        if problem is not None:
            raise SpoolError(f"outbox refused: {problem}; its records are left where they are")
        return directory

    def outbox_has(self, handle: str, kind: str) -> bool:
        """Whether the outbox holds this session's record of `kind` ("start" or "end") to take in:
        a record that reads, or one its shell is still writing (not one that never will be)."""
        directory = outbox_dir(self.path)
        name = f"{handle}.{kind}"
        try:
            load_record(directory, name)
        except Unfinished as unfinished:
            return bool(unfinished.args[0] < STALE_UNFINISHED_SECONDS)
        except UNREADABLE:
            return False
        return True

    def outbox_records(self) -> list[OutboxRecord]:
        """The records waiting in the outbox that are not taken in yet (for `status` and `spool list`)."""
        return read_outbox(self.path, taken=self._taken_names())

    def enforce_limits(self) -> dict[str, int]:
        """Apply the caps now (appends do it too); returns the rows dropped by reason."""
        with self.transaction() as conn:
            return self._enforce(conn, self._clock())

    def _enforce(self, conn: sqlite3.Connection, now: float) -> dict[str, int]:
        return enforce(
            conn, now, max_rows=self.max_rows, max_bytes=self.max_bytes, max_age_seconds=self.max_age_seconds
        )

    def stats(self) -> SpoolStats:
        """The spool's totals; the records still in the outbox that read count as waiting (one
        that never reads is never delivered: `unread_records` says so)."""
        waiting = self.outbox_records()

        with self.reading() as conn:
            now = self._clock()
            depth, oldest = conn.execute(
                f"SELECT COUNT(*), MIN(created_at) FROM events WHERE state = '{STATE_PENDING}'"
            ).fetchone()
            dead = conn.execute(f"SELECT COUNT(*) FROM events WHERE state = '{STATE_DEAD}'").fetchone()[0]
            # (no totals row: a spool edited by hand; the agent's next write makes it again)
            rows, size = conn.execute("SELECT rows, bytes FROM totals WHERE id = 1").fetchone() or (0, 0)
            opened = conn.execute("SELECT handle FROM sessions WHERE end_spooled = 0").fetchall()
            counted = dict(conn.execute("SELECT reason, count FROM drops ORDER BY reason").fetchall())
            drops = {k: v for k, v in counted.items() if not k.startswith(SESSION_DROPS_PREFIX)}
            whole = {
                k.removeprefix(SESSION_DROPS_PREFIX): v
                for k, v in counted.items()
                if k.startswith(SESSION_DROPS_PREFIX)
            }
            aside = conn.execute("SELECT value FROM meta WHERE key = 'moved_aside'").fetchone()
            times = [t for t in (oldest, *(r.created_at for r in waiting)) if t is not None]
            oldest = min(times) if times else None
            return SpoolStats(
                depth=depth + len(waiting),
                oldest_pending_age_seconds=None if oldest is None else max(0.0, now - oldest),
                dead=dead,
                rows=rows,
                bytes=size,
                open_sessions=open_sessions((row[0] for row in opened), waiting),
                drops=drops,
                moved_aside=None if aside is None else _text(aside[0]),
                dropped_sessions=whole,
                outbox=len(waiting),
            )

    def _taken_names(self) -> set[str]:
        with self.reading() as conn:
            try:
                return {row[0] for row in conn.execute("SELECT name FROM taken")}
            except sqlite3.OperationalError:  # a spool made before the outbox: nothing taken yet
                return set()

    def _read_record(self, directory: str, name: str, waiting: set[str]) -> OutboxRecord | None:
        """The record `name`, or None: then in `waiting` if it may read at a later look."""
        path = os.path.join(directory, name)
        try:
            return load_record(directory, name)
        except Unfinished as unfinished:
            if unfinished.args[0] >= STALE_UNFINISHED_SECONDS and remove_if_abandoned(path):
                logger.warning(
                    "outbox record %s was never finished (its shell died writing it): deleted",
                    terminal_safe(path),
                )
            else:
                waiting.add(name)
            return None
        except OSError as exc:  # maybe not at the next look (too many open files, I/O error)
            waiting.add(name)
            self._report(name, exc.strerror or str(exc))
            return None
        except ValueError as exc:  # not a record of ours: left where it is
            waiting.add(name)
            self._report(name, str(exc))
            return None

    def _report(self, name: str, problem: str) -> None:
        where = os.path.join(outbox_dir(self.path), name)
        if where not in _reported:
            _reported.add(where)
            # (a name may hold a byte that is no UTF-8: no log file could take it)
            said = terminal_safe(where), terminal_safe(problem)
            logger.warning("outbox record %s left where it is: %s", *said)


# Records already named in the log as unreadable (once each per process).
_reported: set[str] = set()


def _text(value: object) -> str:
    """A value the meta table holds, as text (a blob or a number put there by hand too)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _names(directory: str) -> list[str] | None:
    """`record_names`, its failure a SpoolError (the agent says it once and looks again later)."""
    try:
        return record_names(directory)
    except OSError as exc:
        raise SpoolError(f"outbox {directory} cannot be read: {exc.strerror or exc}") from exc


def _take(conn: sqlite3.Connection, record: OutboxRecord, sending: Collection[str], clock: float) -> None:
    """Append one record as its shell would have, with its caps (sparing what the agent is `sending`),
    as of when it was written, or as of `clock` (now) if it is dated later: a record dated ahead
    would age out what waits."""
    now = min(record.created_at, clock)
    if record.destination is not None and record.kind == "start":
        insert_start(
            conn, record.handle, record.event_id, record.destination, record.payload, record.shell, now
        )
    else:
        insert_end(conn, record.handle, record.destination, record.payload, now)
    max_rows, max_bytes, max_age = record.caps
    enforce(conn, now, max_rows=max_rows, max_bytes=max_bytes, max_age_seconds=max_age, sending=sending)
