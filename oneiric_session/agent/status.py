"""What the agent publishes about its destinations, and what `status` shows about delivery.

The agent's view of each destination (`DestinationStatus`: breaker, last error, failures) has
one writer, `publish_destinations` (the agent, when it changes), and one reader,
`read_destinations` (for `status`, `spool replay` and a shell's exit notice). It is a small
JSON file beside the spool (`status_path`), not a row in it: a shell leaving reads it to say
whether its events wait for an unreachable server, and opening the database for that would
cost it `sqlite3` (about 5 ms at exit, measured); only when its destination is failing does it
count what waits. Written whole (a new file renamed into place), private, never followed
through a symlink; a file that is not ours, not a file or not a status reads as nothing.

`delivery_status` is the delivery section of `status`: read from the spool file, the outbox and
the agent's lock; it never creates a spool and never shows a token. Standard library only, and
light: a shell's exit imports this module.
"""

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from oneiric_session.common.privacy import ownership_problem, write_private
from oneiric_session.errors import SpoolError

__all__ = [
    "META_PID",
    "DestinationStatus",
    "answering_destinations",
    "delivery_status",
    "failing_destination",
    "publish_destinations",
    "read_destinations",
    "status_path",
]

# Written by a process that joined the spool again after its WAL files were deleted (spool/rejoin.py).
META_REJOINED = "spool.rejoined"
# Written by the agent in the spool's meta table: its pid.
META_PID = "agent.pid"
# The published file is a few hundred bytes per destination; more is not a status.
_MAX_STATUS_BYTES = 256 * 1024


class DestinationStatus(NamedTuple):
    """What the agent publishes about one destination."""

    target: str = ""
    breaker: str = "closed"
    last_error: str | None = None
    auth_error: str | None = None
    failing_since: float | None = None  # wall clock
    consecutive_failures: int = 0
    # Rows waiting for it when it is failing (the exit notice's count; 0 while it answers).
    waiting: int = 0

    @property
    def answering(self) -> bool:
        """Delivering without trouble: no error, no failures."""
        return not (self.last_error or self.auth_error or self.consecutive_failures)

    @classmethod
    def parse(cls, value: object) -> "DestinationStatus | None":
        """From the published text, which any version of the agent (or a damaged file) wrote."""
        if not isinstance(value, dict):
            return None

        def text(name: str) -> str | None:
            item = value.get(name)
            return item if isinstance(item, str) else None

        since = value.get("failing_since")
        failures = value.get("consecutive_failures")
        waiting = value.get("waiting")
        return cls(
            target=text("target") or "",
            breaker=text("breaker") or "closed",
            last_error=text("last_error"),
            auth_error=text("auth_error"),
            failing_since=float(since) if isinstance(since, int | float) else None,
            consecutive_failures=failures if isinstance(failures, int) else 0,
            waiting=waiting if isinstance(waiting, int) else 0,
        )


def status_path(spool_path: str | os.PathLike[str]) -> Path:
    """Where the agent of the spool at `spool_path` publishes: beside the spool's real path."""
    return Path(os.path.realpath(spool_path) + ".status.json")


def publish_destinations(
    spool_path: str | os.PathLike[str], statuses: Mapping[str, DestinationStatus], previous: str | None
) -> str:
    """Write the agent's view of its destinations unless it is `previous` (the text last written)."""
    text = json.dumps({key: statuses[key]._asdict() for key in sorted(statuses)}, sort_keys=True)
    if text != previous:
        write_private(status_path(spool_path), text)
    return text


def read_destinations(spool_path: str | os.PathLike[str]) -> dict[str, DestinationStatus]:
    """The agent's last published view of its destinations, by destination key ({} if none)."""
    path = status_path(spool_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if ownership_problem(path, os.fstat(fd)) is not None:
            return {}
        value = json.loads(os.read(fd, _MAX_STATUS_BYTES))
    except (OSError, ValueError, RecursionError):  # (a damaged file, or thousands of `[`)
        return {}
    finally:
        os.close(fd)
    if not isinstance(value, dict):
        return {}
    parsed = {key: DestinationStatus.parse(item) for key, item in value.items()}
    return {key: status for key, status in parsed.items() if status is not None}


def answering_destinations(spool_path: str | os.PathLike[str]) -> set[str]:
    """Keys of destinations the agent is delivering to without trouble (no error, no failures)."""
    return {key for key, status in read_destinations(spool_path).items() if status.answering}


def failing_destination(spool_path: str | os.PathLike[str], key: str) -> tuple[int, str | None]:
    """Events waiting, and the agent's last error for destination `key`; (0, None) when it is fine.

    Reads two small things, never the database (a shell's exit notice asks this): the published
    status, whose count is of the rows in the spool at its last publish, and the records the
    shells wrote that the agent has not taken in yet, which wait too.
    """
    status = read_destinations(spool_path).get(key) or DestinationStatus()
    if status.last_error is None:
        return 0, None
    from oneiric_session.spool.outbox import outbox_dir
    from oneiric_session.spool.outbox_reader import record_names

    try:
        written = len(record_names(outbox_dir(spool_path)) or ())
    except OSError:
        written = 0
    return status.waiting + written, status.last_error


def delivery_status(
    spool_path: str | os.PathLike[str], *, destination_key: str | None = None
) -> dict[str, Any]:
    """The delivery section of `status`: flat, JSON-ready; `destination_key` picks whose breaker to show."""
    path = Path(spool_path)
    from oneiric_session.wakeup import agent_holds_lock  # (the lock's module: `status` only, not a shell)

    running = agent_holds_lock(path)
    report: dict[str, Any] = {
        "spool_path": str(path),
        "agent_running": running,
        "agent_pid": None,
        "breaker": "closed",
        "last_error": None,
        "auth_error": None,
        "depth": 0,
        "oldest_event_age_seconds": None,
        "dead_letters": 0,
        "drops": {},
        "dropped_sessions": {},
        "open_sessions": 0,
    }
    problems = _privacy_problems(path)
    if problems:
        report["warnings"] = problems
    from oneiric_session.common.sqlite_files import database_present
    from oneiric_session.errors import OneiricSessionError
    from oneiric_session.spool.intake import Intake
    from oneiric_session.spool.opening import disk_bytes
    from oneiric_session.spool.outbox_reader import open_sessions, read_outbox

    try:
        present = database_present(path, "spool")
    except OneiricSessionError as exc:  # (not "absent": an unreadable spool is not an empty one)
        report["error"] = str(exc)
        return report
    if not present:  # no agent made it yet: what the shells wrote waits in the outbox
        waiting = read_outbox(path)
        if waiting:
            oldest = max(0.0, time.time() - min(r.created_at for r in waiting))
            report.update(depth=len(waiting), oldest_event_age_seconds=round(oldest, 1))
            report["open_sessions"] = open_sessions((), waiting)
        return report
    spool = Intake(path, read_only=True)  # status never creates, converts or moves a file
    try:
        stats = spool.stats()
        pid = spool.meta_get(META_PID)
        rejoined = spool.meta_get(META_REJOINED)
        disk = disk_bytes(path)
    except SpoolError as exc:
        report["error"] = str(exc)
        return report
    finally:
        spool.close()
    if running and pid and pid.isdigit():
        report["agent_pid"] = int(pid)
    status = read_destinations(path).get(destination_key or "") or DestinationStatus()
    report.update(
        breaker=status.breaker,
        last_error=status.last_error,
        auth_error=status.auth_error,
        depth=stats.depth,
        oldest_event_age_seconds=(
            None if stats.oldest_pending_age_seconds is None else round(stats.oldest_pending_age_seconds, 1)
        ),
        dead_letters=stats.dead,
        drops=stats.drops,
        spool_bytes=stats.bytes,
        spool_disk_bytes=disk,
        dropped_sessions=stats.dropped_sessions,
        open_sessions=stats.open_sessions,
    )
    if stats.moved_aside:
        report["moved_aside"] = stats.moved_aside
    if rejoined:
        # (a value no agent wrote: not JSON, no such keys, a time no clock shows)
        with contextlib.suppress(ValueError, TypeError, KeyError, OverflowError, OSError):
            notice = json.loads(rejoined)
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(notice["at"])))
            report["spool_rejoined"] = f"{when}: {notice['message']}"
    return report


def _privacy_problems(path: Path) -> list[str]:
    """Why this spool is refused (another user could write it), and paths of ours others can read."""
    from oneiric_session import wakeup
    from oneiric_session.common import privacy

    problems = []
    reason = privacy.foreign_reason(path)
    if reason is not None:
        problems.append(privacy.refusal("spool", reason))
    from oneiric_session.spool.outbox import outbox_dir
    from oneiric_session.spool.outbox_reader import outbox_unreadable, unread_records

    problem = outbox_unreadable(outbox_dir(path))  # another user's, or one that cannot be listed
    if problem is not None:
        problems.append(f"outbox refused, its records are not read: {problem}")
    unread = unread_records(path)  # records in it that are not ours, or cannot be read
    if unread is not None:
        problems.append(unread)
    real = os.path.realpath(path)
    paths = [
        os.path.dirname(real),
        *privacy.spool_companions(real),
        str(wakeup.agent_log_path(Path(real))),
        outbox_dir(real),
        str(status_path(real)),
    ]
    socket = wakeup.socket_path(path)
    if socket is not None:
        paths.append(str(socket.parent))
    problems += privacy.not_private(paths)
    problems += wakeup.socket_dir_problems()
    return problems
