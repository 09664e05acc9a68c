"""What `who` and `last` ask for, and asking it: the local database or a central server, page by page.

The filters and the count come from the command line (`Query`); the sessions come from the bundled
server's database (`--db`) or from a central server's `list_sessions` tool (`--url`), one bounded
page at a time, never more than the count plus one (which tells whether there are more). `who`
adds the idle column from this user's spool. Private to the command (`cli.who`, which renders):
the leading underscore keeps the command dispatcher from taking it for a command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from oneiric_session.common.safetext import terminal_safe
from oneiric_session.common.sqlite_files import database_present
from oneiric_session.config.sources import given_path, server_db_path
from oneiric_session.errors import ConfigError

TOKEN_ENV = "SESSION_BUDDY_TOKEN"
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Never wait longer than this for a central server (connect, then each page).
_URL_TIMEOUT_SECONDS = 15.0
# What `who --url` / `last --url` show of a listed value that repeats a secret given for the server.
_WITHHELD = "[withheld: it repeats a secret]"
# `-n 0` (all) lists at most this many sessions (with the note that there are more): a server
# that pages for ever cannot grow the command without bound.
MAX_ALL_SESSIONS = 100_000


# -- what to ask ---------------------------------------------------------------


def parse_when(value: str, option: str, *, now: datetime | None = None) -> datetime:
    """`2h`, `7d`, ... before now, or an ISO date / date-time (local zone when it names none)."""
    match = _RELATIVE.match(value)
    try:
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
        moment = parsed if parsed.tzinfo else parsed.astimezone()  # naive: the local zone
        moment.astimezone(UTC)  # as the query sends it: a moment before year 1 in UTC cannot be
        return moment
    except (OverflowError, ValueError):  # beyond what a date can hold, either way
        raise ConfigError(
            f"{option} {terminal_safe(value, 80)!r}: out of range; expected a moment between the "
            "years 1 and 9999"
        ) from None


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
        count = args.count or MAX_ALL_SESSIONS
        return cls(open_only, args.component, args.user, args.host, since, until, count)

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

    from oneiric_session.server.listing import BadQuery, SessionFilter
    from oneiric_session.server.store import SessionStore

    db_path = given_path(args.db, "--db") if args.db else server_db_path()
    if not database_present(db_path, "session database"):  # reading must not create a database
        return Result([], False)
    where = SessionFilter(query.open_only, query.component, query.user, query.host, query.since, query.until)
    try:
        store = SessionStore.existing(db_path)
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

    from oneiric_session.tracking.url_rules import url_problem

    problem = url_problem(url)
    if problem is not None:  # (httpx would refuse it, or name a password as the host or path)
        raise ConfigError(f"--url: {problem}")
    try:
        return asyncio.run(_remote_pages(url, query))
    except RemoteError as exc:
        from oneiric_session.errors import OneiricSessionError
        from oneiric_session.tracking.destination import Destination

        # describe(): without any credentials the URL may carry.
        where = Destination(transport="http", url=url).describe().removeprefix("http ")
        raise OneiricSessionError(f"{terminal_safe(where, 200)}: {exc}") from None


async def _remote_pages(url: str, query: Query) -> Result:
    from oneiric_session.errors import DeliveryError
    from oneiric_session.tracking.destination import Destination, Tuning
    from oneiric_session.transport.connection import Connection

    token = os.environ.get(TOKEN_ENV) or None
    tuning = Tuning(connect_seconds=_URL_TIMEOUT_SECONDS, call_seconds=_URL_TIMEOUT_SECONDS)
    connection = Connection(Destination(transport="http", url=url, tuning=tuning))
    try:
        await connection.open()
        got: list[dict[str, Any]] = []
        cursor: str | None = None
        cursors: set[str] = set()
        while True:
            arguments = {**query.tool_arguments(), "limit": query.page_size(len(got))}
            if cursor:
                arguments["cursor"] = cursor
            if token:
                arguments["token"] = token
            answer = await connection.call("list_sessions", arguments, token=token)
            sessions, cursor = _read_page(answer, token, connection.scrub)
            sessions = [_withheld(row, connection.shows_secret) for row in sessions]
            if not sessions:
                cursor = None  # an empty page ends the listing, whatever cursor came with it
            elif cursor is not None and cursor in cursors:
                raise RemoteError("the server sent a page cursor a second time: its listing would never end")
            elif cursor is not None:
                cursors.add(cursor)
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
    answer: Any, token: str | None, clean: Callable[[str], str]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `list_sessions`; `clean` makes server text safe to repeat (the connection's
    `scrub`: the token and the url's secrets cut out)."""
    texts = " ".join(getattr(item, "text", "") for item in answer.content or [])
    if answer.is_error:
        if "Authentication failed" in texts:
            hint = f"set ${TOKEN_ENV} to a valid token" if not token else f"check ${TOKEN_ENV}"
            raise RemoteError(f"the server refused: {clean(texts)} ({hint})")
        if "Unknown tool" in texts:
            raise RemoteError(
                "the server cannot list sessions (it has no list_sessions tool: "
                f"not an oneiric-session server, or an older one): {clean(texts)}"
            )
        raise RemoteError(f"the server refused: {clean(texts)}")
    payload = answer.structured_content
    if payload is None:
        try:
            payload = json.loads(texts)
        except (ValueError, RecursionError):  # (a text of thousands of `[`)
            payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("sessions"), list):
        raise RemoteError(f"unexpected answer to list_sessions: {clean(texts)[:200]}")
    if payload.get("status") != "ok":
        raise RemoteError(f"the server refused: {clean(str(payload.get('error')))}")
    cursor = payload.get("next_cursor")
    sessions = [_plain(row) for row in payload["sessions"] if isinstance(row, dict)]
    return sessions, cursor if isinstance(cursor, str) and cursor else None


def _withheld(row: dict[str, Any], shows_secret: Callable[[str], bool]) -> dict[str, Any]:
    """A listed session with each name and value that repeats the token (or a secret of the url)
    withheld, a number as its digits too: a server lists what anyone recorded, and what is
    printed (`--json` prints every name) holds no secret."""
    kept: dict[str, Any] = {}
    for number, (name, value) in enumerate(row.items(), 1):
        if shows_secret(name):
            name = f"[withheld name {number}: it repeats a secret]"
        if value is not None and shows_secret(str(value)):
            value = _WITHHELD
        kept[name] = value
    return kept


def _plain(row: dict[Any, Any]) -> dict[str, Any]:
    """A listed session with every value a string, a number or None (a server may send anything:
    a list where a pid goes could not even be looked up); anything else becomes its text."""
    return {str(k): v if v is None or isinstance(v, str | int | float) else str(v) for k, v in row.items()}


def fetch(args: argparse.Namespace, query: Query) -> Result:
    return _remote(args.url, query) if args.url else _local(args, query)


# -- idle: what this host's delivery agent saw -------------------------------------


def fill_idle_seconds(args: argparse.Namespace, sessions: list[dict[str, Any]], now: float) -> None:
    """Fill `idle_seconds` from this user's spool: its agent writes when it last saw each shell's
    pid alive. Sessions of other hosts or users (or with no agent watching them) stay None."""
    for row in sessions:
        row["idle_seconds"] = None
    try:
        from oneiric_session.config import load_config
        from oneiric_session.spool import Spool

        path = load_config(args.settings).spool_path()
        if not os.path.exists(path):
            return
        with Spool(path, read_only=True) as spool:  # (never moved aside nor made anew here)
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
