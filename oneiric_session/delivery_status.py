"""What `status` shows about delivery: the agent, the breaker, the spool (standard library only).

Read from the spool file and the agent's lock; never creates a spool, never shows a token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from oneiric_session.errors import SpoolError
from oneiric_session.spool import Spool
from oneiric_session.wakeup import agent_holds_lock

__all__ = [
    "META_DESTINATIONS",
    "META_PID",
    "answering_destinations",
    "delivery_status",
    "failing_destination",
]

# Written by a process that joined the spool again after its WAL files were deleted (spool/rejoin.py).
META_REJOINED = "spool.rejoined"
# Written by the agent (oneiric_session.agent uses the same names).
META_PID = "agent.pid"
META_DESTINATIONS = "agent.destinations"


def _destinations(spool: Spool) -> dict[str, dict[str, Any]]:
    try:
        value = json.loads(spool.meta_get(META_DESTINATIONS) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def answering_destinations(spool: Spool) -> set[str]:
    """Keys of destinations the agent is delivering to without trouble (no error, no failures)."""
    return {
        key
        for key, state in _destinations(spool).items()
        if isinstance(state, dict)
        and not state.get("last_error")
        and not state.get("auth_error")
        and not state.get("consecutive_failures")
    }


def failing_destination(spool: Spool, key: str) -> tuple[int, str | None]:
    """Events waiting in the spool, and the agent's last error for destination `key` (None if fine)."""
    state = _destinations(spool).get(key) or {}
    return spool.stats().depth, state.get("last_error")


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
    spool = Spool(path, read_only=True)  # status never creates, converts or moves a file
    try:
        stats = spool.stats()
        pid = spool.meta_get(META_PID)
        rejoined = spool.meta_get(META_REJOINED)
        disk = spool.disk_bytes()
        destinations = _destinations(spool)
    except SpoolError as exc:
        report["error"] = str(exc)
        return report
    finally:
        spool.close()
    if running and pid and pid.isdigit():
        report["agent_pid"] = int(pid)
    state = destinations.get(destination_key or "") or {}
    report.update(
        breaker=state.get("breaker", "closed"),
        last_error=state.get("last_error"),
        auth_error=state.get("auth_error"),
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
    from oneiric_session import privacy, wakeup

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
