"""`oneiric-session who` and `oneiric-session last`: open sessions now, and the history.

Both read the bundled server's database (`--db`), or ask a central server for its sessions with
the `list_sessions` tool (`--url`), one bounded page at a time. The table fits the terminal, shows
local times, and every cell goes through `safetext` (a hostile component name or shell type
cannot move the cursor or recolour the terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from oneiric_session.errors import ConfigError
from oneiric_session.safetext import terminal_safe

DEFAULT_COUNT = 100
TOKEN_ENV = "SESSION_BUDDY_TOKEN"
# How a session that ended badly reads in `last`, as Unix `last` says it.
EXIT_WORDS = {"abnormal": "gone - no logout"}
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The narrowest a shortened column gets (the ellipsis included).
_MIN_WIDTH = 4
# Never wait longer than this for a central server (connect, then each page).
_URL_TIMEOUT_SECONDS = 15.0


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
        source.add_argument(
            "--db",
            metavar="PATH",
            default=None,
            help="session database (default: $ONEIRIC_SESSION_DB, "
            "else $XDG_DATA_HOME/oneiric-session/sessions.sqlite3)",
        )
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
            help=f"at most N sessions (default {DEFAULT_COUNT}; 0: all)",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
        parser.set_defaults(func=func)


# -- what to ask ---------------------------------------------------------------


def parse_when(value: str, option: str, *, now: datetime | None = None) -> datetime:
    """`2h`, `7d`, ... before now, or an ISO date / date-time (local zone when it names none)."""
    match = _RELATIVE.match(value)
    if match:
        current = now or datetime.now(UTC)
        return current - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{option} {terminal_safe(value, 80)!r}: expected an ISO date-time (2026-12-03T09:00) "
            "or a time ago (30m, 2h, 7d, 1w)"
        ) from None
    return parsed if parsed.tzinfo else parsed.astimezone()  # naive: the local zone


@dataclass(frozen=True)
class Query:
    open_only: bool
    component: str | None
    user: str | None
    host: str | None
    since: datetime | None
    until: datetime | None
    count: int  # 0: all

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, open_only: bool) -> Query:
        if args.count < 0:
            raise ConfigError(f"-n {args.count}: expected 0 (all) or more")
        since = parse_when(args.since, "--since") if args.since else None
        until = parse_when(args.until, "--until") if args.until else None
        return cls(open_only, args.component, args.user, args.host, since, until, args.count)

    def page_size(self, got: int) -> int:
        from oneiric_session.server.listing import MAX_PAGE_SIZE

        # One row beyond the count tells whether there are more.
        return MAX_PAGE_SIZE if self.count == 0 else min(MAX_PAGE_SIZE, self.count + 1 - got)

    def tool_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"open_only": self.open_only}
        for name in ("component", "user", "host"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        for name in ("since", "until"):
            moment: datetime | None = getattr(self, name)
            if moment is not None:
                args[name] = moment.astimezone(UTC).isoformat()
        return args


@dataclass
class Result:
    sessions: list[dict[str, Any]]
    more: bool  # sessions beyond the count exist


def _collect(pages: Iterable[tuple[list[dict[str, Any]], bool]], query: Query) -> Result:
    got: list[dict[str, Any]] = []
    for sessions, last_page in pages:
        got.extend(sessions)
        if query.count and len(got) > query.count:
            return Result(got[: query.count], True)
        if last_page:
            break
    return Result(got, False)


# -- where to ask ----------------------------------------------------------------


def _local(args: argparse.Namespace, query: Query) -> Result:
    import sqlite3

    from oneiric_session.paths import default_server_db_path
    from oneiric_session.server.listing import BadQuery, SessionFilter
    from oneiric_session.server.store import SessionStore

    db_path = Path(args.db).expanduser() if args.db else default_server_db_path()
    if not db_path.exists():  # reading must not create a database
        return Result([], False)
    where = SessionFilter(query.open_only, query.component, query.user, query.host, query.since, query.until)
    try:
        store = SessionStore(db_path)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the session database {db_path}: {exc}") from exc

    def pages() -> Iterable[tuple[list[dict[str, Any]], bool]]:
        cursor: str | None = None
        got = 0
        while True:
            page = store.list_page(where, limit=query.page_size(got), cursor=cursor)
            got += len(page.sessions)
            yield page.sessions, page.next_cursor is None
            cursor = page.next_cursor

    try:
        return _collect(pages(), query)
    except BadQuery as exc:
        raise ConfigError(str(exc)) from exc
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the session database {db_path}: {exc}") from exc
    finally:
        store.close()


class RemoteError(Exception):
    """The central server did not list: unreachable, refused the token, or refused the query."""


def _remote(url: str, query: Query) -> Result:
    import asyncio

    try:
        return asyncio.run(_remote_pages(url, query))
    except RemoteError as exc:
        from oneiric_session.destination import Destination
        from oneiric_session.errors import OneiricSessionError

        # describe(): without any credentials the URL may carry.
        where = Destination(transport="http", url=url).describe().removeprefix("http ")
        raise OneiricSessionError(f"{terminal_safe(where, 200)}: {exc}") from None


async def _remote_pages(url: str, query: Query) -> Result:
    from oneiric_session.destination import Destination, Tuning
    from oneiric_session.errors import DeliveryError
    from oneiric_session.transport.answers import server_text
    from oneiric_session.transport.connection import Connection

    token = os.environ.get(TOKEN_ENV) or None
    tuning = Tuning(connect_seconds=_URL_TIMEOUT_SECONDS, call_seconds=_URL_TIMEOUT_SECONDS)
    connection = Connection(Destination(transport="http", url=url, tuning=tuning))
    try:
        await connection.open()
        got: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            arguments = {**query.tool_arguments(), "limit": query.page_size(len(got))}
            if cursor:
                arguments["cursor"] = cursor
            if token:
                arguments["token"] = token
            answer = await connection.call("list_sessions", arguments, token=token)
            sessions, cursor = _read_page(answer, token, server_text)
            if not sessions:
                cursor = None  # an empty page ends the listing, whatever cursor came with it
            got.extend(sessions)
            if query.count and len(got) > query.count:
                return Result(got[: query.count], True)
            if cursor is None:
                return Result(got, False)
    except DeliveryError as exc:
        raise RemoteError(str(exc)) from None
    finally:
        await connection.close()


def _read_page(
    answer: Any, token: str | None, server_text: Callable[[str, str | None], str]
) -> tuple[list[dict[str, Any]], str | None]:
    texts = " ".join(getattr(item, "text", "") for item in answer.content or [])
    if answer.is_error:
        if "Authentication failed" in texts:
            hint = f"set ${TOKEN_ENV} to a valid token" if not token else f"check ${TOKEN_ENV}"
            raise RemoteError(f"the server refused: {server_text(texts, token)} ({hint})")
        if "Unknown tool" in texts:
            raise RemoteError(
                "the server cannot list sessions (it has no list_sessions tool: "
                f"not an oneiric-session server, or an older one): {server_text(texts, token)}"
            )
        raise RemoteError(f"the server refused: {server_text(texts, token)}")
    payload = answer.structured_content
    if payload is None:
        try:
            payload = json.loads(texts)
        except ValueError:
            payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("sessions"), list):
        raise RemoteError(f"unexpected answer to list_sessions: {server_text(texts[:200], token)}")
    if payload.get("status") != "ok":
        raise RemoteError(f"the server refused: {server_text(str(payload.get('error')), token)}")
    cursor = payload.get("next_cursor")
    sessions = [row for row in payload["sessions"] if isinstance(row, dict)]
    return sessions, cursor if isinstance(cursor, str) and cursor else None


def _fetch(args: argparse.Namespace, query: Query) -> Result:
    return _remote(args.url, query) if args.url else _local(args, query)


# -- idle: what this host's delivery agent saw -------------------------------------


def _idle_seconds(args: argparse.Namespace, sessions: list[dict[str, Any]], now: float) -> None:
    """Fill `idle_seconds` from this user's spool: its agent writes when it last saw each shell's
    pid alive. Sessions of other hosts or users (or with no agent watching them) stay None."""
    for row in sessions:
        row["idle_seconds"] = None
    try:
        from oneiric_session.config import load_config
        from oneiric_session.spool import Spool

        path = load_config(args.settings).spool_path()
        if not path.exists():
            return
        with Spool(path) as spool:
            seen: dict[tuple[object, object], float] = {
                (s.server_session_id, s.pid): s.last_seen_alive
                for s in spool.open_sessions()
                if s.server_session_id is not None
            }
    except Exception:  # a broken config or spool only costs the idle column
        return
    here = socket.gethostname()
    for row in sessions:
        when = seen.get((row.get("session_id"), row.get("pid")))
        if when is not None and row.get("hostname") == here:
            row["idle_seconds"] = max(0.0, round(now - when, 1))


# -- how it reads ------------------------------------------------------------------


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone()


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
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
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
    result = _fetch(args, Query.from_args(args, open_only=True))
    _idle_seconds(args, result.sessions, time.time())
    return _print(args, result, who_table)


def run_last(args: argparse.Namespace) -> int:
    return _print(args, _fetch(args, Query.from_args(args, open_only=False)), last_table)
