"""`oneiric-session shell`: the admin shell with session tracking."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("shell", help="the admin shell with session tracking")
    parser.add_argument(
        "--component",
        metavar="NAME",
        default="oneiric-session",
        help="component name reported for the session (default: oneiric-session)",
    )
    parser.add_argument(
        "--repl",
        choices=("ipython", "stdlib"),
        default=None,
        help="force a REPL (default: IPython when installed, else the standard library's; "
        "or $ONEIRIC_SESSION_REPL)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from oneiric_session.shell import run_shell

    return run_shell(component_name=args.component, repl=args.repl, settings_dir=args.settings)
