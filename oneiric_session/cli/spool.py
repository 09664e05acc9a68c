"""`oneiric-session spool list|replay`: what waits on disk, and delivering it now in the foreground."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneiric_session.common.safetext import terminal_safe
from oneiric_session.common.sqlite_files import database_present
from oneiric_session.config.sources import given_path
from oneiric_session.tracking.url_rules import without_destination_secrets

if TYPE_CHECKING:
    from oneiric_session.spool import Spool, SpooledEvent
    from oneiric_session.tracking.destination import Destination

# How long `replay` waits for a running agent to step aside (it finishes the call in flight).
HANDOVER_SECONDS = 15.0
_HANDOVER_POLL_SECONDS = 0.05


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "spool",
        help="list the events waiting on disk, or deliver them now",
        description="The spool holds every event until its server answered.",
    )
    actions = parser.add_subparsers(dest="spool_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="events waiting for delivery, and dead letters with reasons")
    replay = actions.add_parser(
        "replay",
        help="deliver now, in the foreground, to the destination configured now",
        description="Deliver the waiting events now to the destination configured now: events "
        "spooled for a destination that fails or has not answered yet are moved to it; events for "
        "another destination that is answering (another project's server) stay with it. "
        "Exit 0 when all were delivered.",
    )
    replay.add_argument("--dead", action="store_true", help="also retry the dead letters")
    replay.add_argument(
        "--all", action="store_true", help="move every waiting event, even those of an answering destination"
    )
    for sub in (listing, replay):
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--spool", metavar="PATH", default=None, help="spool database (default: configured)")
    listing.set_defaults(func=run_list)
    replay.set_defaults(func=run_replay)


def _spool_path(args: argparse.Namespace) -> Path:
    if args.spool:
        return given_path(args.spool, "--spool")
    from oneiric_session.config.loader import load_config

    return load_config(args.settings).spool_path()


def _refuse_foreign(path: Path) -> None:
    """UnsafeSpoolError for a spool another user could have written: its launch lines would run as
    you, so the agent and replay refuse it (a database that exists is refused when it is opened)."""
    from oneiric_session.common.privacy import foreign_reason, refusal
    from oneiric_session.errors import UnsafeSpoolError

    refused = foreign_reason(path)
    if refused is not None:
        raise UnsafeSpoolError(refusal(f"spool {path}", refused))


def _row(event: SpooledEvent, now: float) -> dict[str, Any]:
    # An older version's row may name a url secret in its error (kept in clear then): cut out.
    secrets = event.destination.secrets() if event.destination else {}
    row: dict[str, Any] = {
        "kind": event.kind,
        "handle": event.handle,
        "event_id": event.event_id,
        "component_name": event.payload.get("component_name"),
        "server_session_id": event.server_session_id,
        "destination": event.destination.describe() if event.destination else event.destination_key,
        "age_seconds": round(max(0.0, now - event.created_at), 1),
        "attempts": event.attempts,
        "last_error": without_destination_secrets(event.last_error, secrets),
    }
    from oneiric_session.spool import STATE_DEAD

    if event.state == STATE_DEAD:
        row["dead_category"] = event.dead_category
        row["dead_reason"] = without_destination_secrets(event.dead_reason, secrets)
    return row


def run_list(args: argparse.Namespace) -> int:
    from oneiric_session.spool import Spool
    from oneiric_session.spool.full import outbox_pending
    from oneiric_session.spool.outbox import outbox_dir
    from oneiric_session.spool.outbox_reader import outbox_unreadable, unread_records

    path = _spool_path(args)
    report: dict[str, Any] = {"spool_path": str(path), "pending": [], "dead": [], "drops": {}}
    now = time.time()
    if database_present(path, "spool"):  # listing must not create a spool
        with Spool(path, read_only=True) as spool:
            report["pending"] = [_row(e, now) for e in spool.list_pending()]
            report["dead"] = [_row(e, now) for e in spool.list_dead()]
            report["drops"] = spool.stats().drops
    else:  # no agent made it yet: what the shells wrote waits in the outbox (as `status` counts it)
        report["pending"] = [_row(e, now) for e in outbox_pending(path)]
        if report["pending"]:
            _refuse_foreign(path)  # as replay does: listed, they would never be delivered
    # Records there may wait, unread: said (as `status` warns), and not "nothing remains".
    refused = outbox_unreadable(outbox_dir(path))
    if refused is not None:
        report["outbox_refused"] = refused
    unread = unread_records(path)  # records in it never read (another user's): they remain
    if unread is not None:
        report["outbox_unread"] = unread
    # CONTRACT.md: 0 when nothing remains, 1 if some events wait or are dead letters (scriptable).
    status = 1 if report["pending"] or report["dead"] or refused is not None or unread is not None else 0
    if args.json:
        # ensure_ascii: a C1 control or a bidi override in a spooled value prints as \\uXXXX.
        print(json.dumps(report, indent=2))
        return status
    safe = terminal_safe
    print(f"spool {safe(path)}: {len(report['pending'])} waiting, {len(report['dead'])} dead letter(s)")
    for row in report["pending"]:
        error = f"  last error: {safe(row['last_error'])}" if row["last_error"] else ""
        print(
            f"  waiting {safe(row['kind']):5} {safe(row['handle'])} {safe(row['component_name'])} "
            f"age {row['age_seconds']}s attempts {row['attempts']} -> {safe(row['destination'])}{error}"
        )
    for row in report["dead"]:
        print(
            f"  dead    {safe(row['kind']):5} {safe(row['handle'])} ({safe(row['dead_category'])}): "
            f"{safe(row['dead_reason'])}"
        )
    for reason, count in sorted(report["drops"].items()):
        print(f"  dropped {count} ({safe(reason)})")
    if refused is not None:
        print(f"  warning: outbox refused, its records are not read: {safe(refused)}")
    if unread is not None:
        print(f"  warning: {safe(unread)}")
    return status


def _take_lock(path: Path, tokens: dict[str, str] | None, spool: Spool | None = None) -> Any:
    """The agent lock, asking a running agent to step aside first; None if it would not."""
    from oneiric_session import wakeup
    from oneiric_session.errors import OneiricSessionError

    lock = wakeup.AgentLock(path, spool)
    deadline = time.monotonic() + HANDOVER_SECONDS
    while True:
        try:
            if lock.acquire():
                return lock
        except OSError as exc:  # a lock or spool that cannot be used at all (as the agent says it)
            raise OneiricSessionError(f"cannot take the agent lock {lock.path}: {exc}") from None
        if time.monotonic() >= deadline:
            return None
        # Asked again at each look: an agent that holds the lock but has not bound its socket yet
        # (starting, or handing over) loses the datagram, and a busy one never idles out.
        wakeup.wake(path, tokens=tokens, handover=True)
        time.sleep(_HANDOVER_POLL_SECONDS)  # sleep-ok: bounded wait for another process to let go


def run_replay(args: argparse.Namespace) -> int:
    import asyncio

    from oneiric_session import wakeup
    from oneiric_session.agent import DeliveryAgent, uncapped_spool
    from oneiric_session.cli.agent import config_token
    from oneiric_session.config.loader import load_config

    config = load_config(args.settings)
    path = given_path(args.spool, "--spool") if args.spool else config.spool_path()
    destination = config.destination()
    token = config_token(config)
    tokens = {destination.key: token} if token else None
    secrets = {destination.key: destination.secrets()} if destination.secrets() else None
    from oneiric_session.spool.outbox import outbox_dir
    from oneiric_session.spool.outbox_reader import outbox_unreadable, read_outbox, unread_records

    # Records may wait there unread: said at the end, and not "nothing remains" (as `spool list`).
    refused = outbox_unreadable(outbox_dir(path))
    if not database_present(path, "spool") and not read_outbox(path):  # nothing to deliver here
        return _replay_report(args, destination.describe(), 0, 0, 0, refused, unread_records(path))
    from oneiric_session.errors import SpoolError

    _refuse_foreign(path)
    spool = uncapped_spool(path)  # one connection, the lock's claim included
    try:
        lock = _take_lock(path, tokens, spool)
    except BaseException:
        spool.close()
        raise
    if lock is None:
        spool.close()
        print(
            f"oneiric-session: the delivery agent of {path} did not step aside within "
            f"{HANDOVER_SECONDS:g} s; try again",
            file=sys.stderr,
        )
        return 1
    try:
        if args.dead:
            spool.requeue_dead()
        try:  # the shells' records not taken in yet are retargeted with the rest
            spool.rekey()  # (rows an older version spooled under another key: see Spool.rekey)
            spool.take_in()
        except SpoolError as exc:  # what the database holds is still delivered
            print(f"oneiric-session: {terminal_safe(str(exc))}", file=sys.stderr)
        _retarget(spool, destination, everything=args.all)
        # Only this destination's rows (its own and those retargeted to it): another destination's,
        # left with it because it answers, need that destination's token, which only its shells bring.
        progress = Progress(spool.waiting(destination.key))
        agent = DeliveryAgent(spool, tokens=tokens, secrets=secrets, progress=progress)
        result = asyncio.run(agent.replay(only=destination.key))
        if progress.shown:
            print(file=sys.stderr)
    finally:
        lock.release()
    try:
        # Looked at after the release (as an idle agent hands over): a shell that wrote before it
        # saw the lock held and left its record to us; one writing after spawns an agent itself.
        left_over = _needs_agent(spool)
    finally:
        spool.close()
    if left_over:  # rows still waiting, or open sessions to watch: the background agent takes over
        idle = config.settings.agent.idle_exit_seconds  # as a shell of these settings passes it
        wakeup.wake_or_spawn(path, tokens=tokens, idle_exit_seconds=idle, secrets=secrets)
    return _replay_report(
        args,
        destination.describe(),
        result.delivered,
        result.remaining,
        result.dead_lettered,
        refused,
        unread_records(path),
    )


def _retarget(spool: Spool, destination: Destination, *, everything: bool) -> None:
    """Move waiting events to `destination`, except those of another destination that is answering.

    The spool is shared by every settings directory of the user: replay in one project must not
    take a healthy fleet server's events from another project.
    """
    from oneiric_session.agent.status import answering_destinations

    if everything:
        spool.retarget(None, destination)
        return
    answering = answering_destinations(spool.path)
    for old in spool.pending_destinations():
        if old.key != destination.key and old.key not in answering:
            spool.retarget(old.key, destination)


def _needs_agent(spool: Spool) -> bool:
    stats = spool.stats()
    return bool(stats.depth or stats.open_sessions)


class Progress:
    """`replay: N/M delivered` on one line of stderr. M counts the events waiting at the start,
    and grows with those shells write during the replay (taken in and delivered too)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.shown = False

    def __call__(self, delivered: int) -> None:
        self.total = max(self.total, delivered)
        self.shown = True
        print(f"\rreplay: {delivered}/{self.total} delivered", end="", file=sys.stderr, flush=True)


def _replay_report(
    args: argparse.Namespace,
    target: str,
    delivered: int,
    remaining: int,
    dead: int,
    refused: str | None,
    unread: str | None,
) -> int:
    if args.json:
        report: dict[str, Any] = {
            "destination": target,
            "delivered": delivered,
            "remaining": remaining,
            "dead_lettered": dead,
        }
        if refused is not None:
            report["outbox_refused"] = refused
        if unread is not None:
            report["outbox_unread"] = unread
        print(json.dumps(report, indent=2))
    else:
        print(
            f"delivered {delivered} event(s) to {terminal_safe(target)}; "
            f"{remaining} still waiting; {dead} new dead letter(s)"
        )
        if refused is not None:
            print(f"  warning: outbox refused, its records are not read: {terminal_safe(refused)}")
        if unread is not None:
            print(f"  warning: {terminal_safe(unread)}")
    return 0 if remaining == 0 and dead == 0 and refused is None and unread is None else 1
