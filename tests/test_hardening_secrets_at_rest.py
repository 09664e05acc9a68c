"""Hardening (issue 13) item 17, two parts: read-only commands never move or create a file in place of
one they did not create, and server.env secrets are not stored in the spool or the config cache."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.support.delivery import WAIT_SECONDS, Scene, wait_until

SECRET = "hardening-at-rest-server-secret-" + "fedcba9876543210" * 2


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Each file's inode and content digest: what a read-only command must leave as it was."""
    return {
        p.name: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("command", [["status", "--json"], ["spool", "list", "--json"]])
@pytest.mark.hardening(
    item=17,
    fault="`status` / `spool list` with spool.path naming a foreign SQLite file "
    "(the bundled server's database)",
    outcome="the file is left as it was (no *.corrupt-* rename, no spool created in its place); "
    "a clear message",
)
def test_read_only_commands_never_move_a_file_they_did_not_create(tmp_path: Path, command: list[str]) -> None:
    scene = Scene(tmp_path)
    foreign = tmp_path / "db" / "sessions.sqlite3"
    foreign.parent.mkdir()
    with sqlite3.connect(foreign) as db:  # the bundled server's database shape (user_version 0)
        db.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, status TEXT)")
        db.execute("INSERT INTO sessions VALUES ('s-1', 'ended')")
    db.close()
    before = snapshot(foreign.parent)
    result = scene.run(*command, env={"ONEIRIC_SESSION_SPOOL__PATH": str(foreign)})
    assert snapshot(foreign.parent) == before
    assert "not a usable spool" in result.stdout + result.stderr, result
    assert "left untouched" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.hardening(
    item=17,
    fault="server.env holds a secret (SESSION_BUDDY_SECRET, redacted by `status`) and shells spool sessions",
    outcome="the secret is in neither the spool (destinations table, WAL) nor the config cache; the server "
    "still gets it (from the shells' wake-ups, in memory) and sessions are delivered",
)
def test_server_env_secrets_are_not_stored_at_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene(tmp_path, agent__idle_exit_seconds=60)
    scene.configure(server__env={"SESSION_BUDDY_SECRET": SECRET, "HOME": str(tmp_path / "home")})
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    jwt = pytest.importorskip("jwt")
    import time

    now = int(time.time())
    token = jwt.encode(
        {"iss": "session-buddy", "sub": "x", "aud": "session-buddy", "iat": now, "exp": now + 3600},
        SECRET,
        algorithm="HS256",
    )
    try:
        scene.run_shell(2, env={"SESSION_BUDDY_TOKEN": token})
        scene.run_shell(1, env={"SESSION_BUDDY_TOKEN": token})
        wait_until(
            lambda: len(scene.sessions()) == 3 and scene.depth() == 0,
            what="delivery to a server that needs its secret",
            timeout=WAIT_SECONDS,
        )
        assert all(s["status"] == "ended" for s in scene.sessions())  # so the server had its secret
        with scene.spool() as spool:
            spool.meta_get("agent.pid")  # the spool as written, WAL included, is scanned below
        needle = SECRET.encode()
        for path in (tmp_path / "state").rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
        status = scene.run("status")
        assert SECRET not in status.stdout
    finally:
        scene.stop_agents()
    assert os.path.exists(scene.spool_path)
    with sqlite3.connect(scene.spool_path) as db:
        stored = [json.loads(r[0]) for r in db.execute("SELECT json FROM destinations")]
    db.close()
    assert stored and all(SECRET not in json.dumps(d) for d in stored)
    assert all("SESSION_BUDDY_SECRET" in d["env"] for d in stored)  # the name is kept, as a reference


@pytest.mark.parametrize("where", ["password", "query"])
def test_a_secret_in_the_url_is_not_stored_at_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """`url: http://user:password@host/mcp`, or `...?access_token=...` (review O: shown by `status`
    and `spool list`, and stored): the secret travels like a secret server.env value, in memory
    only; the password was written into the config cache and the spool's destinations."""
    from tests.support.http_server import HttpServer

    server = HttpServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    password = "url-pass-" + "0123456789abcdef" * 2
    if where == "password":
        url = server.url.replace("http://", f"http://fleet:{password}@")
    else:
        url = f"{server.url}?team=a&access_token={password}"
    scene = Scene(tmp_path, transport="http", url=url, agent__idle_exit_seconds=60)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    server.start()
    try:
        scene.run_shell(2)
        wait_until(lambda: len(server.rows()) == 2 and scene.depth() == 0, what="delivery over http")
        scene.run_shell(1)  # a second shell: the cache would be read, and written, by now
        wait_until(lambda: len(server.rows()) == 3 and scene.depth() == 0, what="the third session")
        with scene.spool() as spool:
            spool.meta_get("agent.pid")
        for path in (tmp_path / "state").rglob("*"):
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
        assert password not in scene.run("status").stdout
        assert password not in scene.run("spool", "list").stdout
    finally:
        scene.stop_agents()
        server.kill()


async def test_a_stdio_servers_stderr_never_carries_a_secret_env_value_to_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that names its secret on stderr as it fails (a password in a DSN): the stderr tail
    in the error was scrubbed of tokens only, and went to the spool, `status` and the log."""
    import logging
    import sys

    from oneiric_session.agent import DeliveryAgent, uncapped_spool
    from oneiric_session.tracking import events
    from oneiric_session.tracking.destination import Destination, Tuning
    from oneiric_session.tracking.limits import Limits

    server = tmp_path / "server.py"
    server.write_text(
        "import os, sys\n"
        "print('cannot open postgres://app:' + os.environ['DB_PASSWORD'] + '@db/x', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    destination = Destination(
        command=sys.executable,
        args=(str(server),),
        env=(("DB_PASSWORD", SECRET),),
        tuning=Tuning(attempts=1, connect_seconds=10.0),
    )
    start = events.build_start_event(component_name="demo", shell_type="S", metadata=None, limits=Limits())
    with uncapped_spool(tmp_path / "spool.sqlite3") as spool:
        spool.append_start("local-0", destination, start, pid=None, pid_start_time=None, boot_id=None)
        agent = DeliveryAgent(spool, secrets={destination.key: destination.secrets()})
        with caplog.at_level(logging.INFO):
            assert (await agent.replay()).delivered == 0
        assert "[secret]" in (spool.list_pending()[0].last_error or "")
    leaked = [p.name for p in tmp_path.iterdir() if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in caplog.text


def test_a_short_secret_neither_uncovers_a_longer_one_nor_mangles_a_message() -> None:
    """Secrets were replaced one after another: "1" (REQUIRE_AUTH, a "secret" by its name) cut the
    password apart before it was looked for, and it leaked nearly whole; and every "1" of a
    message became "[secret]"."""
    import sys

    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    password = "hunter1-Vq8zLw3pXk"
    env = (("REQUIRE_AUTH", "1"), ("DB_PASSWORD", password), ("API_KEY", password[:10]))
    connection = Connection(Destination(command=sys.executable, env=env))
    assert (
        connection.scrub(f"cannot open postgres://app:{password}@db/x")
        == "cannot open postgres://app:[secret]@db/x"
    )
    assert connection.scrub("port 8181 in use") == "port 8181 in use"


@pytest.mark.parametrize(
    ("env", "token", "said", "scrubbed"),
    [
        (
            {"DB_PASSWORD": "pa55w"},
            None,
            "cannot open postgres://app:pa55w@db/x",
            "cannot open postgres://app:[secret]@db/x",
        ),
        (
            {"DB_PASSWORD": "Vq8zLw3pXk-hunter2-9f3a", "API_KEY": "user::Vq8z"},
            None,
            "login user::Vq8zLw3pXk-hunter2-9f3a refused",
            "login [secret] refused",
        ),
        (
            {"API_CREDENTIALS": "tok-1234567890abcdef:s3cr3t-Pa55w0rd"},
            "tok-1234567890abcdef",
            "bad credentials tok-1234567890abcdef:s3cr3t-Pa55w0rd",
            "bad credentials [token]",
        ),
    ],
    ids=["five_characters", "overlapping_from_before", "a_token_inside_a_secret"],
)
def test_every_secret_is_cut_out_whole(
    env: dict[str, str], token: str | None, said: str, scrubbed: str
) -> None:
    """A short secret was skipped (review H), and one secret or token replaced before another could
    cut that other apart, leaving most of it (review H)."""
    import sys

    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command=sys.executable, env=tuple(env.items())))
    if token:
        connection._tokens.add(token)
    assert connection.scrub(said) == scrubbed
