"""`oneiric-session who` and `oneiric-session last`: open sessions now, and the history.

Both read the bundled server's database (`--db`), or ask a central server for its sessions with
the `list_sessions` tool (`--url`), one bounded page at a time (`cli._who_query`). This module is
the command: its options, and how the sessions read. The table fits the terminal, shows local
times, and every cell goes through `safetext` (a hostile component name or shell type cannot move
the cursor or recolour the terminal).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from oneiric_session.cli import add_db_option
from oneiric_session.cli._who_query import (
    MAX_ALL_SESSIONS,
    TOKEN_ENV,
    Query,
    Result,
    fetch,
    fill_idle_seconds,
)
from oneiric_session.common.safetext import terminal_safe

DEFAULT_COUNT = 100
# How a session that ended badly reads in `last`, as Unix `last` says it.
EXIT_WORDS = {"abnormal": "gone - no logout"}
# The narrowest a shortened column gets (the ellipsis included).
_MIN_WIDTH = 4


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    who = subparsers.add_parser(
        "who",
        help="sessions open now (started, not ended)",
        description="Sessions open now, newest first: component, shell type, user, host, pid, since "
        "(local time) and idle (how long ago this host's delivery agent last saw the shell alive; "
        "'?' where that is not known here).",
    )
    last = subparsers.add_parser(
        "last",
        help="session history, newest first, with duration and exit reason",
        description="Session history, newest first, with duration and exit reason "
        "('gone - no logout' for a shell that died without an end).",
    )
    for parser, func in ((who, run_who), (last, run_last)):
        source = parser.add_mutually_exclusive_group()
        add_db_option(source)
        source.add_argument(
            "--url",
            metavar="URL",
            default=None,
            help=f"ask the server at URL (http://HOST:PORT/mcp) instead; token from ${TOKEN_ENV}",
        )
        parser.add_argument("--component", metavar="NAME", default=None, help="only this component")
        parser.add_argument("--user", metavar="NAME", default=None, help="only this user name")
        parser.add_argument("--host", metavar="NAME", default=None, help="only this host name")
        parser.add_argument(
            "--since",
            metavar="WHEN",
            default=None,
            help="started at or after: ISO date-time (local zone if none) or 2h, 7d",
        )
        parser.add_argument(
            "--until", metavar="WHEN", default=None, help="started before: same forms as --since"
        )
        parser.add_argument(
            "-n",
            dest="count",
            type=int,
            default=DEFAULT_COUNT,
            metavar="N",
            help=f"at most N sessions (default {DEFAULT_COUNT}; 0: all, up to {MAX_ALL_SESSIONS:,})",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
        parser.set_defaults(func=func)


# -- how it reads ------------------------------------------------------------------


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone()
    except (ValueError, OverflowError):  # not a time, or one the local zone cannot hold (year 1)
        return None


def local_time(value: Any) -> str:
    """An event timestamp in the local zone to the minute: `12-03 15:04` this year, else
    `2025-12-03 15:04`; as given if unparsable."""
    parsed = _parse(value)
    if parsed is None:
        return "-" if value is None else str(value)
    return parsed.strftime("%m-%d %H:%M" if parsed.year == datetime.now().year else "%Y-%m-%d %H:%M")


def end_time(started: Any, ended: Any) -> str:
    """The end in the local zone: `15:04` on the day it started, else `12-04 09:10` (or the year too)."""
    start, end = _parse(started), _parse(ended)
    if end is None:
        return "-" if ended is None else str(ended)
    if start is not None and start.date() == end.date():
        return end.strftime("%H:%M")
    return end.strftime("%m-%d %H:%M" if start is not None and start.year == end.year else "%Y-%m-%d %H:%M")


def clock(seconds: Any) -> str:
    """`1:02:03` (hours may exceed 24: `49:00:00`)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "-"
    total = int(max(0, seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


def exit_words(row: dict[str, Any]) -> str:
    if row.get("status") == "open":
        return "still logged in"
    reason = row.get("exit_reason")
    if not reason:
        return "-"
    return EXIT_WORDS.get(str(reason), str(reason))


def fit(
    header: list[str],
    rows: list[list[str]],
    width: int,
    shrink: list[int],
    *,
    last: list[int] | None = None,
    optional: int | None = None,
) -> str:
    """Columns two spaces apart, no wider than `width` where possible: first the `optional` column is
    left out, then the widest of the `shrink` columns is cut, repeatedly, down to its header's width;
    then those and the `last` ones down to 4 characters. A cut value ends with an ellipsis."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def over() -> int:
        return sum(widths) + 2 * (len(widths) - 1) - width

    if optional is not None and over() > 0:
        header = header[:optional] + header[optional + 1 :]
        rows = [row[:optional] + row[optional + 1 :] for row in rows]
        del widths[optional]
        shrink = [i - (i > optional) for i in shrink if i != optional]
        last = [i - (i > optional) for i in last or [] if i != optional]
    last = last or []  # (None: no `last` columns)
    # First no column narrower than its header; on a very narrow terminal, headers are cut too.
    passes = ({i: max(_MIN_WIDTH, len(header[i])) for i in shrink}, dict.fromkeys(shrink + last, _MIN_WIDTH))
    for floors in passes:
        while over() > 0:
            candidates = [i for i in floors if widths[i] > floors[i]]
            if not candidates:
                break
            widths[max(candidates, key=lambda i: widths[i])] -= 1

    def cell(text: str, size: int) -> str:
        return (text if len(text) <= size else text[: size - 1] + "…").ljust(size)

    return "\n".join(
        "  ".join(cell(text, size) for text, size in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    )


def _safe(value: Any) -> str:
    return terminal_safe("-" if value is None or value == "" else value, 200)


def who_table(sessions: list[dict[str, Any]], width: int) -> str:
    header = ["COMPONENT", "SHELL", "USER", "HOST", "PID", "SINCE", "IDLE"]
    rows = [
        [
            _safe(s.get("component_name")),
            _safe(s.get("shell_type")),
            _safe(s.get("user")),
            _safe(s.get("hostname")),
            _safe(s.get("pid")),
            _safe(local_time(s.get("started_at"))),
            "?" if s.get("idle_seconds") is None else clock(s["idle_seconds"]),
        ]
        for s in sessions
    ]
    return fit(header, rows, width, shrink=[0, 1, 2, 3], last=[5])


def last_table(sessions: list[dict[str, Any]], width: int) -> str:
    header = ["COMPONENT", "SHELL", "USER", "HOST", "STARTED", "ENDED", "DURATION", "EXIT", "SESSION"]
    rows = [
        [
            _safe(s.get("component_name")),
            _safe(s.get("shell_type")),
            _safe(s.get("user")),
            _safe(s.get("hostname")),
            _safe(local_time(s.get("started_at"))),
            _safe(end_time(s.get("started_at"), s.get("ended_at"))),
            clock(s.get("duration_seconds")),
            _safe(exit_words(s)),
            _safe(s.get("session_id")),
        ]
        for s in sessions
    ]
    return fit(header, rows, width, shrink=[0, 1, 2, 3], last=[7], optional=8)


Table = Callable[[list[dict[str, Any]], int], str]


def _print(args: argparse.Namespace, result: Result, table: Table) -> int:
    if args.json:
        # ASCII escapes (\u001b, \u202e): lossless for a script, harmless on a terminal.
        print(json.dumps(result.sessions, ensure_ascii=True, indent=2))
        return 0
    where = "the server" if args.url else "the session database"
    if not result.sessions:
        filtered = any(vars(args).get(name) for name in _FILTERS)
        print("no sessions match" if filtered else f"no sessions in {where}")
        return 0
    print(table(result.sessions, shutil.get_terminal_size().columns))
    if result.more:
        print(f"(only the newest {len(result.sessions)}: -n 0 shows all, --since narrows)")
    return 0


_FILTERS = ("component", "user", "host", "since", "until")


def run_who(args: argparse.Namespace) -> int:
    result = fetch(args, Query.from_args(args, open_only=True))
    fill_idle_seconds(args, result.sessions, time.time())
    return _print(args, result, who_table)


def run_last(args: argparse.Namespace) -> int:
    return _print(args, fetch(args, Query.from_args(args, open_only=False)), last_table)
