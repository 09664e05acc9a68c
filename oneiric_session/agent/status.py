"""What `status` shows about delivery: the agent, the breaker, the spool (standard library only).

Read from the spool file and the agent's lock; never creates a spool, never shows a token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneiric_session.errors import SpoolError
from oneiric_session.spool import Outbox
from oneiric_session.wakeup import agent_holds_lock

__all__ = [
    "META_DESTINATIONS",
    "META_PID",
    "DestinationStatus",
    "answering_destinations",
    "delivery_status",
    "failing_destination",
    "publish_destinations",
    "read_destinations",
]

# Written by a process that joined the spool again after its WAL files were deleted (spool/rejoin.py).
META_REJOINED = "spool.rejoined"
# Written by the agent: its pid, and its view of each destination (`publish_destinations`).
META_PID = "agent.pid"
META_DESTINATIONS = "agent.destinations"


@dataclass(frozen=True)
class DestinationStatus:
    """What the agent publishes about one destination: one writer (`publish_destinations`, called
    by the agent), one reader (`read_destinations`, for `status`, the shells and `spool replay`)."""

    target: str = ""
    breaker: str = "closed"
    last_error: str | None = None
    auth_error: str | None = None
    failing_since: float | None = None  # wall clock
    consecutive_failures: int = 0

    @property
    def answering(self) -> bool:
        """Delivering without trouble: no error, no failures."""
        return not (self.last_error or self.auth_error or self.consecutive_failures)

    @classmethod
    def _parse(cls, value: object) -> DestinationStatus | None:
        """From the spool's text, which any version of the agent (or a damaged file) wrote."""
        if not isinstance(value, dict):
            return None

        def text(name: str) -> str | None:
            item = value.get(name)
            return item if isinstance(item, str) else None

        since = value.get("failing_since")
        failures = value.get("consecutive_failures")
        return cls(
            target=text("target") or "",
            breaker=text("breaker") or "closed",
            last_error=text("last_error"),
            auth_error=text("auth_error"),
            failing_since=float(since) if isinstance(since, int | float) else None,
            consecutive_failures=failures if isinstance(failures, int) else 0,
        )


def publish_destinations(
    spool: Outbox, statuses: Mapping[str, DestinationStatus], previous: str | None
) -> str:
    """Write the agent's view of its destinations unless it is `previous` (the text last written)."""
    text = json.dumps({key: dataclasses.asdict(statuses[key]) for key in sorted(statuses)}, sort_keys=True)
    if text != previous:
        spool.meta_set(META_DESTINATIONS, text)
    return text


def read_destinations(spool: Outbox) -> dict[str, DestinationStatus]:
    """The agent's last published view of its destinations, by destination key ({} if none)."""
    try:
        value = json.loads(spool.meta_get(META_DESTINATIONS) or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    parsed = {key: DestinationStatus._parse(item) for key, item in value.items()}
    return {key: status for key, status in parsed.items() if status is not None}


def answering_destinations(spool: Outbox) -> set[str]:
    """Keys of destinations the agent is delivering to without trouble (no error, no failures)."""
    return {key for key, status in read_destinations(spool).items() if status.answering}


def failing_destination(spool: Outbox, key: str) -> tuple[int, str | None]:
    """Events waiting in the spool, and the agent's last error for destination `key` (None if fine)."""
    status = read_destinations(spool).get(key) or DestinationStatus()
    return spool.stats().depth, status.last_error


def delivery_status(
    spool_path: str | os.PathLike[str], *, destination_key: str | None = None
) -> dict[str, Any]:
    """The delivery section of `status`: flat, JSON-ready; `destination_key` picks whose breaker to show."""
    path = Path(spool_path)
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
    if not path.exists():
        return report
    spool = Outbox(path, read_only=True)  # status never creates, converts or moves a file
    try:
        stats = spool.stats()
        pid = spool.meta_get(META_PID)
        rejoined = spool.meta_get(META_REJOINED)
        disk = spool.disk_bytes()
        destinations = read_destinations(spool)
    except SpoolError as exc:
        report["error"] = str(exc)
        return report
    finally:
        spool.close()
    if running and pid and pid.isdigit():
        report["agent_pid"] = int(pid)
    status = destinations.get(destination_key or "") or DestinationStatus()
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
        with contextlib.suppress(ValueError, TypeError, KeyError):
            notice = json.loads(rejoined)
            when = dt.datetime.fromtimestamp(float(notice["at"]), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            report["spool_rejoined"] = f"{when}: {notice['message']}"
    return report


def _privacy_problems(path: Path) -> list[str]:
    """Why this spool is refused (another user could write it), and paths of ours others can read."""
    from oneiric_session import wakeup
    from oneiric_session.common import privacy

    problems = []
    reason = privacy.foreign_reason(path)
    if reason is not None:
        problems.append(f"spool refused: {reason} (another user could have written its launch lines)")
    real = os.path.realpath(path)
    paths = [os.path.dirname(real), *privacy.spool_companions(real), str(wakeup.agent_log_path(Path(real)))]
    socket = wakeup.socket_path(path)
    if socket is not None:
        paths.append(str(socket.parent))
    problems += privacy.not_private(paths)
    problems += wakeup.socket_dir_problems()
    return problems
