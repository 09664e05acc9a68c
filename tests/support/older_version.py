"""What a version before b5b63d2 left on disk, where a url's query secret was no secret yet."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import Scene, wait_until


def older_cache_entry(scene: Scene, monkeypatch: pytest.MonkeyPatch, url: str) -> Path:
    """A settings cache entry of format 3, holding `url` whole, in the scene's cache directory
    (the scene's environment set in this process, so the cache directory is the scene's)."""
    from oneiric_session.config.shell_view import cache_dir

    for name, value in scene.env.items():
        monkeypatch.setenv(name, value)
    directory = cache_dir()
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    entry = directory / "0123456789abcdef.json"
    entry.write_text(json.dumps({"format": 3, "key": "0123456789abcdef", "view": {"url": url}}))
    entry.chmod(0o600)
    return entry


def older_row(scene: Scene, url: str, error: str) -> None:
    """A start spooled as the older version spooled it: its destination stored with `url` whole,
    under a key this version does not compute, and its last error `error`."""
    destination = Destination(transport="http", url=url)
    start = events.build_start_event(component_name="old", shell_type="S", metadata=None, limits=Limits())
    with scene.spool() as spool:
        assert spool.append_start(
            "local-old", destination, start, pid=None, pid_start_time=None, boot_id=None
        )
        (row,) = spool.list_pending()
        spool.record_failure(row, error, 0.0)
        with spool.transaction() as conn:
            stored = json.loads(conn.execute("SELECT json FROM destinations").fetchone()[0])
            conn.execute(
                "UPDATE destinations SET key = 'oldkey', json = ?", (json.dumps({**stored, "url": url}),)
            )
            conn.execute("UPDATE events SET destination_key = 'oldkey'")
            conn.execute("UPDATE sessions SET destination_key = 'oldkey'")


def first_request_to(scene: Scene, url_for: Callable[[int], str]) -> str:
    """What the agent sends first for an older row of the url `url_for(port)`, where `port` is a
    listener on loopback standing for the host RFC 3986 reads in it: its request, as text ("" when
    it sent nothing: the row left the waiting rows, refused, or 20 s passed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(30)
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                received.append(conn.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    older_row(scene, url_for(listener.getsockname()[1]), "connection refused")
    agent = scene.start_agent()

    def attempted() -> bool:  # sent to the listener, or refused without sending
        with scene.spool() as spool:
            return not thread.is_alive() or not spool.list_pending()

    try:
        wait_until(attempted, what="the agent's first attempt at the older row", timeout=20)
    finally:
        agent.kill()
        agent.wait()
        scene.stop_agents()
        listener.close()
        thread.join(5)
    return b"".join(received).decode("latin-1")


def urls_after_rekey(scene: Scene, url: str) -> list[str]:
    """The urls the spool's destinations table holds once an older row of `url` was brought up to
    date (`Spool.rekey`, as the agent and `spool replay` do)."""
    from oneiric_session.spool import Spool

    older_row(scene, url, "connection refused")
    with Spool(scene.spool_path) as spool:
        spool.rekey()
    with Spool(scene.spool_path) as spool, spool.transaction() as conn:
        return [json.loads(text)["url"] for (text,) in conn.execute("SELECT json FROM destinations")]
