"""The bundled server on Streamable HTTP as a real subprocess, restartable on the same port and database."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.delivery import WAIT_SECONDS, wait_until
from tests.support.server_process import SERVE, isolated_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpServer:
    """`oneiric-session serve --http 127.0.0.1:PORT`, HOME/XDG under `root`; stderr kept in files there."""

    def __init__(self, root: Path, *, secret: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.db = root / "server.sqlite3"
        self.env = isolated_env(root / "server-home", {"SESSION_BUDDY_SECRET": secret} if secret else None)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Launch it and return once it listens (same port and database as any earlier launch)."""
        self.starts += 1
        errlog = self.root / f"server-{self.starts}.stderr"
        with open(errlog, "wb") as err:
            self.process = subprocess.Popen(
                [*SERVE, "--db", str(self.db), "--http", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
            )
        process = self.process

        def listening() -> bool:
            assert process.poll() is None, errlog.read_text()
            return "listening on" in errlog.read_text()

        wait_until(listening, what="the HTTP server to listen")

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client, every MCP session it held is forgotten."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                assert self.process.wait(WAIT_SECONDS) == 0
            finally:
                self.kill()

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded session with its stored start (environment and metadata decoded)."""
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db, timeout=WAIT_SECONDS) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(row) for row in db.execute("SELECT * FROM sessions ORDER BY recorded_at")]
        db.close()
        for row in rows:
            for column in ("environment", "start_metadata", "end_metadata"):
                row[column] = json.loads(row[column]) if row[column] else None
        return rows


@contextlib.contextmanager
def listing_server(root: Path, **env: str) -> Iterator[str]:
    """tests/support/listing_server.py over Streamable HTTP; its URL once it accepts connections."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("listing_server.py")), f"127.0.0.1:{port}"],
        env={**os.environ, **isolated_env(root), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        assert server.poll() is None, "the listing server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        wait_until(accepting, what="the listing server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(WAIT_SECONDS)
