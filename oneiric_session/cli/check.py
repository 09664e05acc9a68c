"""`oneiric-session check`: one real round trip (start, then end) straight to the configured server.

A diagnostic: not through the spool, no retries, so a person sees the real
reason at once. Exit 0 when both events were acknowledged, 1 when not, 2 on a
configuration error (raised as ConfigError, turned into 2 by the dispatcher).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from oneiric_session.cli import EXIT_FAILED, EXIT_OK

COMPONENT_NAME = "oneiric-session-check"
SHELL_TYPE = "OneiricSessionCheck"
# `--timeout S` bounds the whole command, counted from its process's start: the round trip gets
# what is left of S, and tearing the connection down at most this much more (a server that ignores
# SIGTERM is killed at the deadline; a clean goodbye after a delivered round trip is not cut short
# before it).
TEARDOWN_MARGIN_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="send one session start and end straight to the configured server",
        description="Send one session start and its end straight to the configured server (not through "
        "the spool) and print the session id, or why it was not delivered. Exit 0 when both were "
        "acknowledged, 1 when not, 2 on a configuration error.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        default=None,
        help="give up after S seconds in all (default: the configured connect and call timeouts)",
    )
    parser.set_defaults(func=run)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def _failure_kind(exc: Exception) -> str:
    from oneiric_session import errors

    if isinstance(exc, errors.AuthenticationError):
        return "authentication_failed"
    if isinstance(exc, errors.RejectedError):
        return "rejected"
    if isinstance(exc, errors.DeliveryTimeoutError):
        return "timed_out"
    return "server_unavailable"


def _process_age_seconds() -> float:
    """Seconds since this process started (0 where /proc cannot tell): interpreter start-up counts."""
    import os

    from oneiric_session.tracking.procinfo import pid_start_time

    try:
        ticks = pid_start_time(os.getpid())
        with open("/proc/uptime", encoding="ascii") as file:
            uptime = float(file.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK") if ticks is not None else 0.0
    except (OSError, ValueError, IndexError):
        return 0.0
    return min(max(age, 0.0), 60.0)


async def _round_trip(config: Any, timeout: float | None) -> dict[str, Any]:
    import asyncio

    from oneiric_session.errors import DeliveryError, DeliveryTimeoutError
    from oneiric_session.tracking.events import build_end_event, build_start_event
    from oneiric_session.transport import SessionBuddyClient

    destination = config.destination()
    tuning = destination.tuning._replace(attempts=1)
    stated = timeout
    if timeout is not None:
        # What is left of the bound after start-up (loading the settings, importing mcp).
        timeout = max(timeout - _process_age_seconds(), 0.05)
        tuning = tuning._replace(
            connect_seconds=min(tuning.connect_seconds, timeout),
            call_seconds=min(tuning.call_seconds, timeout),
        )
    destination = destination._replace(tuning=tuning)
    report_cwd = config.report_cwd()
    limits = config.limits()
    result: dict[str, Any] = {"ok": False, "destination": destination.describe()}
    started = time.monotonic()
    client = SessionBuddyClient(destination, token=config.token)
    try:
        async with asyncio.timeout(timeout):
            start = build_start_event(
                component_name=COMPONENT_NAME,
                shell_type=SHELL_TYPE,
                metadata={"check": True},
                limits=limits,
                report_cwd=report_cwd,
            )
            session_id = await client.start_session(start)
            result.update(session_id=session_id, start_seconds=round(time.monotonic() - started, 3))
            end_started = time.monotonic()
            end = build_end_event(
                session_id=session_id,
                exit_reason="check",
                duration_seconds=end_started - started,
                metadata={"check": True},
                limits=limits,
            )
            result["end_status"] = await client.end_session(end)
            result.update(ok=True, end_seconds=round(time.monotonic() - end_started, 3))
    except TimeoutError:
        error: DeliveryError = DeliveryTimeoutError(f"no complete round trip within {stated:g} s")
        result.update(error="timed_out", reason=str(error))
    except DeliveryError as exc:
        result.update(error=_failure_kind(exc), reason=str(exc))
    finally:
        await _teardown(client, ok=result["ok"], deadline=None if timeout is None else started + timeout)
    return result


async def _teardown(client: Any, *, ok: bool, deadline: float | None) -> None:
    """Close the connection: at once after a failure, else gracefully, killed at the deadline's margin."""
    import asyncio

    if not ok:
        await client.aclose(abort=True)
        return
    kill = None
    if deadline is not None:
        delay = max(deadline - time.monotonic(), 0.0) + TEARDOWN_MARGIN_SECONDS
        kill = asyncio.get_running_loop().call_later(delay, client.abort)
    try:
        await client.aclose()
    finally:
        if kill is not None:
            kill.cancel()


def run(args: argparse.Namespace) -> int:
    import asyncio

    from oneiric_session.common.safetext import terminal_safe
    from oneiric_session.config import load_config

    config = load_config(args.settings)
    config.token()  # a token_file problem is a ConfigError: report it before any connection
    result = asyncio.run(_round_trip(config, args.timeout))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif result["ok"]:
        print(
            f"delivered: session {terminal_safe(result['session_id'])} started "
            f"({result['start_seconds']:.3f} s) and {terminal_safe(result['end_status'])} "
            f"({result['end_seconds']:.3f} s) via {terminal_safe(result['destination'])}"
        )
    else:
        print(f"not delivered: {result['error']}: {terminal_safe(result['reason'])}", file=sys.stderr)
        print(f"server: {terminal_safe(result['destination'])}", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILED
