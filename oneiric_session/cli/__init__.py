"""The `oneiric-session` command: a thin dispatcher over one module per command.

Each module in this package defines `register(subparsers)` which adds its
sub-command and sets `func(args) -> int`. Modules import heavy dependencies
(mcp, pydantic) inside `func`, so `--help` and the `noop` path stay light.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from oneiric_session.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneiric-session",
        description="Session-Buddy session tracking for Oneiric admin shells.",
    )
    parser.add_argument(
        "--settings",
        metavar="DIR",
        default=None,
        help="settings directory (default: $ONEIRIC_SESSION_SETTINGS_DIR, else ./settings)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"oneiric-session: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
