"""The token reaches the agent in memory only, a new one without a restart, and requeues auth dead letters."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.support.delivery import Scene, wait_until

jwt = pytest.importorskip("jwt")

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def _token(secret: str) -> str:
    now = int(time.time())
    claims = {"iss": "session-buddy", "sub": "tester", "aud": "session-buddy", "iat": now, "exp": now + 3600}
    return jwt.encode({**claims, "jti": str(uuid.uuid4())}, secret, algorithm="HS256")


@pytest.fixture
def scene_settings() -> dict[str, Any]:
    """The shared `scene` (tests/conftest.py), its server given a secret."""
    return {"server__env": {"SESSION_BUDDY_SECRET": SECRET}}


def test_a_new_token_reaches_the_running_agent_and_revives_auth_dead_letters(scene: Scene) -> None:
    """A refused token parks the start as an "auth" dead letter; the next shell's good token revives it."""
    bad, good = _token("not-the-server-secret-" + "x" * 20), _token(SECRET)
    holder = scene.shell(1, hold=True, env={"SESSION_BUDDY_TOKEN": bad})
    assert holder.stdout is not None and holder.stdin is not None
    holder.stdout.readline()
    wait_until(lambda: scene.dead() == 1, what="the refused start")
    listing = json.loads(scene.run("spool", "list", "--json").stdout)
    (dead,) = listing["dead"]
    assert (dead["kind"], dead["dead_category"]) == ("start", "auth")
    assert "Authentication failed" in dead["dead_reason"]
    agent_pid = scene.agent_pid()
    assert agent_pid is not None

    scene.run_shell(1, env={"SESSION_BUDDY_TOKEN": good}, component="second")
    wait_until(lambda: len(scene.sessions()) == 2, what="both starts delivered")
    assert scene.agent_pid() == agent_pid  # the same agent: no restart was needed

    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    sessions = scene.sessions()
    assert [s["status"] for s in sessions] == ["ended", "ended"]
    assert scene.dead() == 0

    # Neither token was ever written anywhere: spool, WAL, lock, agent log, server database.
    scene.stop_agents()
    for path in scene.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert bad.encode() not in data and good.encode() not in data, path


def test_a_shell_from_another_runtime_dir_reaches_the_agent(scene: Scene) -> None:
    """A shell whose $XDG_RUNTIME_DIR or $TMPDIR differ from the running agent's (a login shell
    after a cron- or tmux-started one, an ssh session) computed another socket path: its wake-up,
    and the token in it, never reached the agent. It finds the agent's socket in its note."""
    import shutil
    import tempfile

    short = [tempfile.mkdtemp(prefix="os-") for _ in range(2)]  # short: a socket path fits in both
    try:
        bad, good = _token("not-the-server-secret-" + "x" * 20), _token(SECRET)
        holder_env = {"SESSION_BUDDY_TOKEN": bad, "XDG_RUNTIME_DIR": "", "TMPDIR": short[0]}
        holder = scene.shell(1, hold=True, env=holder_env)
        assert holder.stdout is not None and holder.stdin is not None
        holder.stdout.readline()
        wait_until(lambda: scene.dead() == 1, what="the start refused with the bad token")
        scene.run_shell(1, env={"SESSION_BUDDY_TOKEN": good, "XDG_RUNTIME_DIR": short[1]}, component="second")
        wait_until(lambda: len(scene.sessions()) == 2, what="both starts delivered with the new token")
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    finally:
        scene.stop_agents()
        for directory in short:
            shutil.rmtree(directory, ignore_errors=True)
