"""The token is sent, and never shown, logged or written; a refused one is reported once and parked."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session import wakeup
from oneiric_session.config.loader import load_config
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.http_server import HttpServer

jwt = pytest.importorskip("jwt")

SECRET = "token-secrecy-test-secret-" + "0123456789abcdef" * 2
TOKEN_ENV = "FLEET_SB_TOKEN"  # not the default: token_env names the variable


def make_token(secret: str) -> str:
    """A JWT as CONTRACT.md describes it, with a unique subject so its payload segment is distinctive."""
    now = int(time.time())
    claims = {
        "iss": "session-buddy",
        "sub": f"secrecy-{uuid.uuid4().hex}",
        "aud": "session-buddy",
        "iat": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def needles(token: str) -> list[bytes]:
    """The token and each of its distinctive parts: the claims (payload) and the signature."""
    _, payload, signature = token.split(".")
    return [token.encode(), payload.encode(), signature.encode()]


def assert_nowhere(
    tokens: list[str], outputs: list[str], root: Path, *, except_files: tuple[Path, ...] = ()
) -> int:
    """No output and no file under `root` holds any token or part of one; how many files were read."""
    for token in tokens:
        for needle in needles(token):
            for output in outputs:
                assert needle.decode() not in output, output
    read = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in except_files:
            data = path.read_bytes()
            read += 1
            for token in tokens:
                for needle in needles(token):
                    assert needle not in data, path
    return read


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    server = HttpServer(tmp_path, secret=SECRET)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def scene(tmp_path: Path, server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    (tmp_path / "host").mkdir()
    scene = Scene(tmp_path / "host", transport="http", url=server.url, token_env=TOKEN_ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])  # this process finds the agent
    yield scene
    scene.stop_agents()


def test_the_token_is_sent_and_never_shown_logged_or_written(
    tmp_path: Path, server: HttpServer, scene: Scene
) -> None:
    """Shell, agent, status, spool list and check all use the token (the server's secret is set, so
    nothing is delivered without it), and it appears in no output and in no file of the whole tree."""
    token, file_token = make_token(SECRET), make_token(SECRET)
    env = {TOKEN_ENV: token}
    outputs: list[str] = []

    shell = scene.shell(2, env=env)
    outputs += shell.communicate(timeout=WAIT_SECONDS)
    assert shell.returncode == 0, outputs[-1]
    wait_until(lambda: scene.depth() == 0, what="the agent to deliver")
    rows = server.rows()
    assert len(rows) == 2 and all(r["status"] == "ended" for r in rows)  # so the token was sent

    def run(*args: str, expect: int = 0, run_env: dict[str, str] = env) -> str:
        result = scene.run(*args, env=run_env)
        outputs.extend((result.stdout, result.stderr))
        assert result.returncode == expect, result.stderr
        return result.stdout

    status = json.loads(run("status", "--json"))
    assert status["token"] == {"env": TOKEN_ENV, "file": None, "available": True}
    assert status["delivery"]["auth_error"] is None
    assert "token: available (from $FLEET_SB_TOKEN)" in run("status")
    assert json.loads(run("spool", "list", "--json"))["dead"] == []
    check = json.loads(run("check", "--json"))
    assert check["ok"] is True, check

    # The same from a token_file of mode 0600 (no variable set); one readable by others is refused.
    token_path = scene.root / "sb.token"
    token_path.write_text(file_token + "\n")
    os.chmod(token_path, 0o600)
    from_file = {"ONEIRIC_SESSION_TOKEN_FILE": str(token_path)}  # and no token variable
    assert json.loads(run("check", "--json", run_env=from_file))["ok"] is True
    assert json.loads(run("status", "--json", run_env=from_file))["token"]["available"] is True
    os.chmod(token_path, 0o640)
    run("check", "--json", expect=2, run_env=from_file)
    assert "chmod 600" in outputs[-1]
    os.chmod(token_path, 0o600)
    scene.stop_agents()  # a new agent, spawned by a shell whose only token is the file's
    scene.run_shell(1, env=from_file)
    wait_until(lambda: scene.depth() == 0, what="the agent to deliver with the file's token")
    assert [r["status"] for r in server.rows()] == ["ended"] * 5

    scene.stop_agents()
    server.stop()  # its log and database are complete, then searched too
    log = wakeup.agent_log_path(scene.spool_path)
    assert log.exists() and "serving" in log.read_text()
    files = assert_nowhere([token, file_token], outputs, tmp_path, except_files=(token_path,))
    assert files >= 5  # spool, its lock, agent log, server database, server stderr at least


def test_an_authentication_failure_is_reported_once_and_parked_until_the_token_changes(
    tmp_path: Path, server: HttpServer, scene: Scene
) -> None:
    """Three sessions with a refused token: three dead letters, one log line, one status line; polls and
    wake-ups carrying the same token add nothing; a new token (no restart) delivers all and clears it."""
    bad, good = make_token("not-the-server-secret-" + "x" * 20), make_token(SECRET)
    scene.configure(agent__idle_exit_seconds="60")
    outputs: list[str] = []
    scene.run_shell(3, env={TOKEN_ENV: bad})
    wait_until(lambda: scene.dead() == 6, what="three starts (and their ends) parked")
    agent_pid = scene.agent_pid()
    key = load_config(environ=scene.env).destination().key
    for _ in range(3):
        assert wakeup.wake(scene.spool_path, tokens={key: bad})
    time.sleep(1.5)  # sleep-ok: a few agent polls (1 s) pass; none may report the failure again

    log = wakeup.agent_log_path(scene.spool_path).read_text()
    auth_lines = [line for line in log.splitlines() if "uthentication failed" in line]
    assert len(auth_lines) == 1, log
    assert "dead letters until a new token arrives" in auth_lines[0]
    assert "WARNING" not in log.replace(auth_lines[0], ""), log

    status = scene.run("status", env={TOKEN_ENV: bad})
    outputs += [status.stdout, status.stderr]
    status_lines = [line for line in status.stdout.splitlines() if "uthentication failed" in line]
    assert len(status_lines) == 1 and status_lines[0].startswith("  auth_error: "), status.stdout
    report = json.loads(scene.run("status", "--json").stdout)["delivery"]
    assert (report["depth"], report["dead_letters"], report["last_error"]) == (0, 6, None)
    assert "Authentication failed" in report["auth_error"]
    listing = json.loads(scene.run("spool", "list", "--json").stdout)
    assert sorted(d["dead_category"] for d in listing["dead"] if d["kind"] == "start") == ["auth"] * 3
    assert server.rows() == []

    assert wakeup.wake(scene.spool_path, tokens={key: good})  # what the next shell with a new token does
    wait_until(lambda: scene.dead() == 0 and scene.depth() == 0, what="the parked events to be delivered")
    assert [r["status"] for r in server.rows()] == ["ended"] * 3
    assert scene.agent_pid() == agent_pid
    status = scene.run("status", "--json")
    outputs += [status.stdout, status.stderr]
    assert json.loads(status.stdout)["delivery"]["auth_error"] is None

    scene.stop_agents()
    server.stop()
    assert_nowhere([bad, good], outputs, tmp_path)


def test_a_spawned_agent_is_handed_the_token_and_never_holds_it_in_its_environment(
    server: HttpServer, scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell hands the agent it spawns its token through a pipe only the agent inherits. Spawned
    here with no token anywhere else (no variable, no file) and no wake-up after: the delivery needs
    the token handed over; and /proc/<agent>/environ, readable for its whole life, never holds it."""
    from oneiric_session.spool import Spool
    from oneiric_session.tracking import events
    from oneiric_session.tracking.limits import Limits

    token = make_token(SECRET)
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name="handed", shell_type="S", metadata=None, limits=Limits())
    with Spool(scene.spool_path) as spool:  # waiting, as a shell left it when no agent ran
        assert spool.append_start("local-h", destination, start, pid=None, pid_start_time=None, boot_id=None)
    for name, value in scene.env.items():  # the spawning shell's environment: the scene's
        monkeypatch.setenv(name, value)
    agent = wakeup.spawn_agent(scene.spool_path, tokens={destination.key: token}, idle_exit_seconds=30)
    assert agent is not None
    environ = Path(f"/proc/{agent}/environ").read_bytes()
    assert not any(needle in environ for needle in needles(token))
    wait_until(lambda: len(server.rows()) == 1, what="the start delivered with the handed-over token")
    assert scene.dead() == 0
