"""`oneiric-session agent`: the per-user delivery agent (started on demand by shells; rarely by hand)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from oneiric_session.cli import SafeFormatter
from oneiric_session.config.sources import given_path

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig
    from oneiric_session.spool import Spool, SpooledEvent
    from oneiric_session.wakeup import AgentLock

# The agent's log, next to the spool: small, rotated once (it holds no token, only messages).
LOG_MAX_BYTES = 256 * 1024
# The agent, and the server it starts (a child inherits it), run below the shells: on a 2-core
# machine a delivery competes for the CPU with the start-up and exit of the very shells it
# serves, and a shell waiting for its prompt comes first; a delivery need only happen soon.
AGENT_NICENESS = 10


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the delivery agent (shells start it on demand)",
        description="The per-user delivery agent: sends spooled events to their servers. Without "
        "--foreground it is started detached (if none runs for this spool) and the command returns.",
    )
    parser.add_argument("--foreground", action="store_true", help="run in this process until idle")
    parser.add_argument("--spool", metavar="PATH", default=None, help="spool database (default: configured)")
    parser.add_argument(
        "--idle-exit-seconds",
        type=float,
        default=None,
        help="exit after this long with nothing to do (default: the agent.idle_exit_seconds setting)",
    )
    parser.add_argument("--log-file", metavar="PATH", default=None, help="log here instead of stderr")
    parser.set_defaults(func=run)


def load_config_quietly(settings_dir: str | None) -> LoadedConfig | None:
    """The configuration if it loads; an agent serving a given spool does not need it to."""
    from oneiric_session.config.loader import load_config
    from oneiric_session.errors import ConfigError

    try:
        return load_config(settings_dir)
    except ConfigError as exc:
        logging.getLogger("oneiric_session.agent").warning("configuration not used: %s", exc)
        return None


def config_token(config: LoadedConfig | None) -> str | None:
    from oneiric_session.errors import ConfigError

    if config is None:
        return None
    try:
        return config.token()
    except ConfigError as exc:
        logging.getLogger("oneiric_session.agent").warning("token not used: %s", exc)
        return None


class _PrivateLog(logging.handlers.RotatingFileHandler):
    """The agent's log: 0600, never opened through a symlink, never another user's file."""

    def _open(self):  # type: ignore[no-untyped-def]  # the base class's signature
        from oneiric_session.common.privacy import open_private

        fd = open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def _setup_logging(log_file: str | None) -> None:
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if log_file:
        try:
            from oneiric_session.common.privacy import private_dir

            private_dir(Path(log_file).parent)
            handler = _PrivateLog(log_file, maxBytes=LOG_MAX_BYTES, backupCount=1)
        except OSError as exc:
            print(f"oneiric-session agent: cannot log to {log_file}: {exc}", file=sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s agent[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("oneiric_session")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run(args: argparse.Namespace, *, on_answer: Callable[[SpooledEvent], None] | None = None) -> int:
    """The command; `on_answer` goes to the `DeliveryAgent` (tests/support/killing_agent.py)."""
    from oneiric_session import wakeup

    if not args.foreground:
        if args.spool:
            spool_path = given_path(args.spool, "--spool")
            config = load_config_quietly(args.settings)
        else:
            config = _load_config(args.settings)  # ConfigError: exit 2, the spool is unknown
            spool_path = config.spool_path()
        token = config_token(config)
        tokens = {config.destination().key: token} if config is not None and token else None
        own_secrets = config.destination().secrets() if config is not None else {}
        result = wakeup.wake_or_spawn(
            spool_path,
            tokens=tokens,
            secrets={config.destination().key: own_secrets} if config is not None and own_secrets else None,
        )
        print(f"delivery agent for {spool_path}: {'already running' if result == 'woken' else result}")
        return 0 if result != "failed" else 1
    # A shell starts it in the background through `sh`, which sets SIGINT and SIGQUIT to be ignored
    # (POSIX), and that survives exec (into every server it launches, too): back to the defaults.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    with contextlib.suppress(OSError):  # a priority we cannot lower is no reason not to deliver
        os.nice(AGENT_NICENESS)
    _setup_logging(args.log_file)
    if args.idle_exit_seconds is not None and args.idle_exit_seconds <= 0:
        from oneiric_session.errors import ConfigError

        raise ConfigError(f"--idle-exit-seconds {args.idle_exit_seconds}: must be positive")
    config = None
    if args.spool:
        spool_path = given_path(args.spool, "--spool")
    else:
        config = _load_config(args.settings)
        spool_path = config.spool_path()
    # The lock comes before the configuration (pydantic) and the delivery code: of many agents
    # spawned at once, the losers exit after a bare Python start.
    log = logging.getLogger("oneiric_session.agent")
    handed = wakeup.take_handoff()  # always taken (its pipe closed), even by an agent that exits now
    handed_tokens = dict(handed.tokens)
    handed_secrets = {key: dict(values) for key, values in handed.secrets.items()}
    wakeup.clear_spawn_marker(spool_path)  # before the lock: see wakeup.waker's module doc
    from oneiric_session.common.privacy import foreign_reason, refusal

    refused = foreign_reason(spool_path)
    if refused is not None:  # its launch lines and wake-ups could be another user's: run nothing
        log.error("refusing to deliver: %s", refusal(f"spool {spool_path}", refused))
        return 1
    from oneiric_session.spool import Spool

    # The agent's one connection (as agent.uncapped_spool, without importing the delivery code
    # before the lock): the lock's claim goes through it.
    spool = Spool(spool_path, max_rows=2**62, max_bytes=2**62, max_age_seconds=float("inf"), durable=False)
    lock = wakeup.AgentLock(spool_path, spool)
    try:
        acquired = lock.acquire()
    except OSError as exc:
        log.error("cannot take the agent lock %s: %s", lock.path, exc)
        return 1
    if not acquired:
        log.info("another agent is delivering %s; exiting", spool_path)
        return 0
    try:
        if config is None:
            config = load_config_quietly(args.settings)
        idle = args.idle_exit_seconds
        if idle is None and config is not None:
            idle = config.settings.agent.idle_exit_seconds
        if idle is None:
            from oneiric_session.config.sources import DEFAULT_IDLE_EXIT_SECONDS

            idle = DEFAULT_IDLE_EXIT_SECONDS
        token = config_token(config)
        tokens, secrets = handed_tokens, handed_secrets
        if config is not None and token:
            # The agent's own settings give a token for their own destination only (issue 13.1).
            tokens = {config.destination().key: token, **tokens}
        if config is not None and config.destination().secrets():
            secrets = {config.destination().key: config.destination().secrets(), **secrets}
        return serve(
            spool_path,
            lock,
            tokens=tokens,
            idle_exit_seconds=idle,
            secrets=secrets,
            spool=spool,
            on_answer=on_answer,
        )
    finally:
        lock.release()
        spool.close()


def _load_config(settings_dir: str | None) -> LoadedConfig:
    from oneiric_session.config.loader import load_config

    return load_config(settings_dir)  # ConfigError: exit 2


def serve(
    spool_path: Path,
    lock: AgentLock,
    *,
    tokens: dict[str, str],
    idle_exit_seconds: float,
    secrets: dict[str, dict[str, str]] | None = None,
    spool: Spool | None = None,
    on_answer: Callable[[SpooledEvent], None] | None = None,
) -> int:
    """Run the agent here, holding `lock`, until idle."""
    import asyncio

    from oneiric_session import wakeup
    from oneiric_session.agent import DeliveryAgent, run_agent, uncapped_spool

    log = logging.getLogger("oneiric_session.agent")
    spool = spool or uncapped_spool(spool_path)
    agent = DeliveryAgent(
        spool, tokens=tokens, secrets=secrets, idle_exit_seconds=idle_exit_seconds, on_answer=on_answer
    )
    log.info("agent %d serving %s", os.getpid(), spool_path)
    try:
        asyncio.run(run_agent(agent, lock, wakeup.WakeupListener(spool_path)))
    finally:
        log.info("agent %d stopped (delivered %d)", os.getpid(), agent.delivered)
        spool.close()
    return 0
