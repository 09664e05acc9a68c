"""`oneiric-session serve`: the bundled Session-Buddy-compatible MCP server, on stdio or Streamable HTTP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from oneiric_session.cli import add_db_option
from oneiric_session.config.sources import given_path, server_db_path
from oneiric_session.errors import ConfigError

if TYPE_CHECKING:
    from oneiric_session.server.store import SessionStore

HTTP_PATH = "/mcp"
# A stuck client must not hold the process after SIGTERM; SSE streams never close on their own.
HTTP_SHUTDOWN_SECONDS = 5
# On a signal, wait this long for a write in flight to commit; after that its transaction rolls
# back (SQLite is atomic) and the client, unanswered, sends it again.
SIGNAL_WRITE_WAIT_SECONDS = 2.0
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

logger = logging.getLogger("oneiric_session.server")


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve anywhere


def parse_bind(value: str) -> Bind:
    """`HOST:PORT`, with IPv6 hosts in brackets (`[::1]:8765`)."""
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return Bind(host, int(port_text))


def check_bind(bind: Bind, *, allow_remote: bool, secret: str | None) -> None:
    if bind.is_loopback:
        return
    if not (allow_remote and secret):
        raise ConfigError(
            f"--http {bind.host}:{bind.port} is not a loopback address: anyone who can reach it could "
            "record sessions. Serve on 127.0.0.1, or pass --allow-remote and set SESSION_BUDDY_SECRET "
            "(32+ characters) so every call needs a token"
        )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the bundled Session-Buddy-compatible MCP server",
        description="Run the bundled Session-Buddy-compatible MCP server on stdio (default) or "
        "Streamable HTTP. Tokens are checked when SESSION_BUDDY_SECRET (or BODAI_SHARED_SECRET) is set.",
    )
    add_db_option(parser)
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help=f"serve Streamable HTTP at http://HOST:PORT{HTTP_PATH} instead of stdio (port 0: any free port)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --http on a non-loopback address (requires SESSION_BUDDY_SECRET)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Logs go to stderr: in stdio mode stdout carries JSON-RPC and nothing else.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="oneiric-session serve: %(message)s")
    from oneiric_session.server.auth import TokenVerifier, secret_from_env

    bind = parse_bind(args.http) if args.http else None
    if bind is None:
        # First, while this is the only thread: every thread started later inherits the mask.
        _block_exit_signals()
    secret = secret_from_env(os.environ)
    if bind is not None:
        check_bind(bind, allow_remote=args.allow_remote, secret=secret)
    verifier = TokenVerifier(secret) if secret else None
    sock = _listen(bind) if bind is not None else None
    db_path = given_path(args.db, "--db") if args.db else server_db_path()
    store = _open_store(db_path)

    from oneiric_session.server.app import build_server

    server = build_server(store, verifier=verifier)
    if bind is None:
        _wait_for_exit_signals(store)
    else:
        _exit_on_signals(store)
    try:
        if sock is None:
            from oneiric_session.server.stdio import serve_stdio

            serve_stdio(server)
        else:
            import anyio

            anyio.run(_serve_http, server, sock)
    finally:
        store.close()
    return 0


def _open_store(db_path: Path) -> SessionStore:
    import sqlite3

    from oneiric_session.common.sqlite_files import database_present
    from oneiric_session.server.store import SessionStore

    # Made if absent; refused if not a regular file: a FIFO would hold the open for ever, and in
    # stdio mode the exit signals are blocked by then (not a database there: said, not waited on).
    database_present(db_path, "session database")
    try:
        return SessionStore(db_path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the session database {db_path}: {exc}") from exc


def _leave(store: SessionStore) -> None:
    """Close the store once no write is half done, and exit 0.

    Every answered event is already committed, so leaving at once loses nothing; a graceful
    unwind could wait forever for the SDK's stdin reader, a worker thread that cannot be
    interrupted.
    """
    store.close(wait_seconds=SIGNAL_WRITE_WAIT_SECONDS)
    os._exit(0)


def _block_exit_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)


def _wait_for_exit_signals(store: SessionStore) -> None:
    """stdio: one thread takes SIGTERM/SIGINT/SIGHUP with sigwait(); every other thread blocks them.

    A Python handler runs only when the main thread next executes bytecode. Here the main
    thread waits in the event loop's epoll_wait(), which only a signal delivered to that very
    thread interrupts; the kernel may hand a process-directed signal to any thread that does
    not block it (the SDK's stdin reader), and the server then stayed up until its next input.
    """

    def wait() -> None:
        signal.sigwait(EXIT_SIGNALS)
        _leave(store)

    threading.Thread(target=wait, name="oneiric-session-exit-signals", daemon=True).start()


def _exit_on_signals(store: SessionStore) -> None:
    """HTTP: a handler for SIGTERM/SIGINT/SIGHUP once uvicorn is done with them.

    uvicorn captures these signals while it serves (a graceful shutdown, bounded by
    HTTP_SHUTDOWN_SECONDS) and raises them again when it returns; its main loop wakes
    every 0.1 s, so the handler runs whichever thread the kernel chose.
    """

    def leave(signum: int, frame: FrameType | None) -> None:
        _leave(store)

    for signum in EXIT_SIGNALS:
        signal.signal(signum, leave)


def _listen(bind: Bind) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    try:
        sock = socket.create_server((bind.host, bind.port), family=family)
    except OSError as exc:
        raise ConfigError(
            f"--http {bind.host}:{bind.port}: cannot listen there: {exc.strerror or exc}"
        ) from exc
    # Accepted sockets inherit it: without it Nagle plus delayed ACKs add ~40 ms to every call.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _serve_http(server: Any, sock: socket.socket) -> None:
    import uvicorn

    from oneiric_session.mcp_compat import serve_http_app

    host, port = sock.getsockname()[:2]
    # The host turns on the SDK's DNS-rebinding protection for loopback addresses.
    app = serve_http_app(server, path=HTTP_PATH, host=host)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=HTTP_SHUTDOWN_SECONDS,
    )
    # One line a script (or a test) can read to learn the port chosen for port 0.
    url = f"http://{f'[{host}]' if sock.family == socket.AF_INET6 else host}:{port}{HTTP_PATH}"
    print(f"oneiric-session serve: listening on {url}", file=sys.stderr, flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])
