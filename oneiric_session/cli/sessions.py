"""`oneiric-session sessions`: what the bundled server recorded."""

from __future__ import annotations

import argparse
import json
from typing import Any

from oneiric_session.cli import add_db_option
from oneiric_session.common.safetext import terminal_safe
from oneiric_session.common.sqlite_files import database_present
from oneiric_session.config.sources import given_path, server_db_path

# What a table cell shows of one value at most.
_CELL_CHARS = 200


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sessions",
        help="list the sessions the bundled server recorded",
        description="List the sessions the bundled server recorded, in the order it recorded them.",
    )
    add_db_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from oneiric_session.errors import ConfigError
    from oneiric_session.server.store import LISTED_COLUMNS, SessionStore

    db_path = given_path(args.db, "--db") if args.db else server_db_path()
    sessions: list[dict[str, Any]] = []
    if database_present(db_path, "session database"):  # listing must not create a database
        try:
            store = SessionStore.existing(db_path)
            try:
                sessions = store.list_sessions()
            finally:
                store.close()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the session database {db_path}: {exc}") from exc
    if args.json:
        # ensure_ascii: a C1 control or a bidi override recorded from a client prints as \\uXXXX.
        print(json.dumps(sessions, indent=2))
    elif not sessions:
        print(f"no sessions recorded in {terminal_safe(db_path)}")
    else:
        print(_table(LISTED_COLUMNS, [[_cell(row[name]) for name in LISTED_COLUMNS] for row in sessions]))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    # One safe line: a hostile shell_type must not forge table rows nor hide escapes in them.
    # Line breaks stay visible as \\n / \\r; every other control and escape is removed.
    return terminal_safe(str(value).replace("\n", "\\n").replace("\r", "\\r"), _CELL_CHARS)


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
