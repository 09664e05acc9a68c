"""The `oneiric-session` command: a thin dispatcher over one module per command.

Each module in this package defines `register(subparsers)` which adds its
sub-command and sets `func(args) -> int`. Modules import heavy dependencies
(mcp, pydantic) inside `func`, so `--help` and the `noop` path stay light.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from oneiric_session.common.safetext import safe_lines, terminal_safe
from oneiric_session.errors import ConfigError, OneiricSessionError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
# What an error message shows at most (it may quote a settings file or a server).
_ERROR_CHARS = 2000


_SETTINGS_HELP = "settings directory (default: $ONEIRIC_SESSION_SETTINGS_DIR, else ./settings)"


def add_db_option(parser: argparse._ActionsContainer) -> None:
    """`--db PATH`: the bundled server's database, one option for every command that serves or reads it.

    None when not given: the command asks `config.sources.server_db_path()`, which the help describes.
    """
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help="session database (default: $ONEIRIC_SESSION_DB, "
        "else $XDG_DATA_HOME/oneiric-session/sessions.sqlite3)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneiric-session",
        description="Session-Buddy session tracking for Oneiric admin shells.",
    )
    parser.add_argument("--settings", metavar="DIR", default=None, help=_SETTINGS_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    _accept_settings_anywhere(subparsers)
    return parser


def _accept_settings_anywhere(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`--settings DIR` also after a (sub-)command: `spool replay --settings DIR`, as users write it."""
    for command in subparsers.choices.values():
        if not any("--settings" in action.option_strings for action in command._actions):
            # SUPPRESS: absent here, the value given before the command (or None) stays.
            command.add_argument("--settings", metavar="DIR", default=argparse.SUPPRESS, help=_SETTINGS_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_settings_anywhere(action)


class SafeFormatter(logging.Formatter):
    """Every log line terminal-safe: a server's, a client's or a file's text cannot hide escapes in it."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_lines(super().format(record))


def main(argv: Sequence[str] | None = None) -> int:
    # What a library logs where nobody configured logging (the MCP SDK quoting a server's headers,
    # say) reaches the terminal through Python's last-resort handler: made safe there too.
    if logging.lastResort is not None:
        logging.lastResort.setFormatter(SafeFormatter())
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"oneiric-session: configuration error: {terminal_safe(exc, _ERROR_CHARS)}", file=sys.stderr)
        return EXIT_CONFIG
    except OneiricSessionError as exc:  # e.g. a spool that cannot be opened: one line, no traceback
        print(f"oneiric-session: {terminal_safe(exc, _ERROR_CHARS)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `oneiric-session status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
