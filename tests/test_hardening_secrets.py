"""Hardening (issue 13) items 1, 2, 3 and 16: tokens per destination, private files, shared spool
directories, one deliverer per spool file. Real shells, agents, bundled servers and another user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from oneiric_session import wakeup
from oneiric_session.common import privacy
from oneiric_session.config.loader import load_config
from oneiric_session.spool import Spool
from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import WAIT_SECONDS, Scene, process_gone, wait_until
from tests.support.users import as_user

SERVE = [sys.executable, "-m", "oneiric_session", "serve"]
PROXY = str(Path(__file__).parent / "support" / "recording_proxy.py")
SECRET = "hardening-secrets-test-secret-" + "0123456789abcdef" * 2


# -- fixtures and helpers ------------------------------------------------------------------------


def make_token(secret: str) -> str:
    jwt = pytest.importorskip("jwt")
    now = int(time.time())
    claims = {"iss": "session-buddy", "sub": "x", "aud": "session-buddy", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def recorded(log: Path) -> list[dict[str, Any]]:
    """The JSON-RPC requests a proxied server received."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def tool_calls(log: Path) -> list[dict[str, Any]]:
    return [r for r in recorded(log) if r.get("method") == "tools/call"]


def proxied_bundled_server(scene: Scene, log: Path, db: Path, *, delay: float = 0.0, **env: str) -> None:
    """The scene's server: the real bundled one, behind a proxy that records every request."""
    scene.configure(
        server__command=sys.executable,
        server__args=[PROXY, str(log), repr(delay), "--", *SERVE, "--db", str(db)],
    )
    if env:
        scene.configure(server__env=env)


def session_rows(db: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "oneiric_session", "sessions", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def fill(scene: Scene, sessions: int) -> Destination:
    """`sessions` starts and ends straight into the spool (no shell, so no agent is woken)."""
    destination = load_config(scene.env["ONEIRIC_SESSION_SETTINGS_DIR"], environ=scene.env).destination()
    with Spool(scene.spool_path) as spool:
        for n in range(sessions):
            handle = f"local-fill-{n}"
            start = events.build_start_event(
                component_name="fill", shell_type="TestShell", metadata={"n": n}, limits=Limits()
            )
            assert spool.append_start(handle, destination, start, pid=None, pid_start_time=None, boot_id=None)
            end = events.build_end_event(
                session_id=handle,
                exit_reason="user_exit",
                duration_seconds=1.0,
                metadata=None,
                limits=Limits(),
            )
            assert spool.append_end(handle, destination, end)
    return destination


# -- 1. tokens ---------------------------------------------------------------------------------


@pytest.mark.hardening(
    item=1,
    fault="a shell of project X (SESSION_BUDDY_TOKEN, server X with a secret) starts the agent, "
    "then a shell of project Y (another server, no token) ends sessions",
    outcome="server Y never receives X's token, on any call; X's sessions are delivered with it",
)
def test_a_token_goes_only_to_the_destination_it_was_given_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x_root, y_root = tmp_path / "x", tmp_path / "y"
    x_root.mkdir()
    y_root.mkdir()
    x = Scene(x_root, agent__idle_exit_seconds=60)
    x.configure(server__args=["-m", "oneiric_session", "serve", "--db", str(x.db)])
    x.configure(server__env={"SESSION_BUDDY_SECRET": SECRET, "HOME": str(x_root / "home")})
    y = Scene(y_root, agent__idle_exit_seconds=60)
    log = y_root / "y-requests.jsonl"
    proxied_bundled_server(y, log, y.db)
    # One user: both projects share the spool and the agent (one per spool).
    for name in ("ONEIRIC_SESSION_SPOOL__PATH", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        y.env[name] = x.env[name]
    y.spool_path = x.spool_path
    monkeypatch.setenv("XDG_RUNTIME_DIR", x.env["XDG_RUNTIME_DIR"])
    token = make_token(SECRET)
    try:
        x.run_shell(1, env={"SESSION_BUDDY_TOKEN": token})
        wait_until(lambda: [r["status"] for r in session_rows(x.db)] == ["ended"], what="X's session")
        agent = x.agent_pid()
        assert agent is not None
        y.run_shell(2)
        wait_until(lambda: len(session_rows(y.db)) == 2 and x.depth() == 0, what="Y's sessions")
        assert x.agent_pid() == agent  # the very agent that X's shell started, holding X's token
        calls = tool_calls(log)
        assert len(calls) == 4, calls
        for call in calls:
            assert "token" not in call["params"]["arguments"], call
        assert token not in log.read_text()
    finally:
        x.stop_agents()


# -- 2. private files ---------------------------------------------------------------------------


@pytest.mark.hardening(
    item=2,
    fault="shells, the agent and the bundled server run under umask 022",
    outcome="server data dir, database, WAL, SHM, spool (+WAL/SHM), lock, agent log, config cache and "
    "socket dir are 0700/0600; `status` warns about one made readable",
)
def test_everything_holding_sessions_is_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = Scene(tmp_path, agent__idle_exit_seconds=60)
    data = tmp_path / "data" / "oneiric-session"
    db = data / "sessions.sqlite3"
    scene.configure(server__args=["-m", "oneiric_session", "serve", "--db", str(db)])
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    old = os.umask(0o022)  # inherited by every process below
    try:
        scene.run_shell(2)
        wait_until(lambda: len(session_rows(db)) == 2 and scene.depth() == 0, what="delivery")
        spool = scene.spool_path
        state = spool.parent
        socket_path = wakeup.socket_path(spool)
        assert socket_path is not None
        dirs = [data, state, state / "config-cache", socket_path.parent]
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), spool, Path(f"{spool}-wal"), Path(f"{spool}-shm")]
        files += [wakeup.lock_path(spool), wakeup.agent_log_path(spool), *(state / "config-cache").iterdir()]
        modes = {str(p): oct(mode(p)) for p in dirs + files}
        assert {str(p): oct(0o700) for p in dirs} | {str(p): oct(0o600) for p in files} == modes
        os.chmod(wakeup.agent_log_path(spool), 0o644)
        report = json.loads(scene.run("status", "--json").stdout)["delivery"]
        assert any("agent.log is not private (mode 0o644" in w for w in report["warnings"]), report
    finally:
        os.umask(old)
        scene.stop_agents()


# -- 3. shared spool directories ----------------------------------------------------------------


# A shell whose spool is refused: its prompt still comes, nothing is recorded, nothing raises.
REFUSED_SHELL = """
import asyncio
from oneiric_session import SessionEventEmitter
emitter = SessionEventEmitter(component_name="victim")
async def main():
    handle = await emitter.emit_session_start("TestShell", {})
    print(handle, await emitter.emit_session_end(handle, {"duration_seconds": None}))
asyncio.run(main())
"""


def plant_script_row(spool_path: Path, marker: Path) -> None:
    """A pending start whose destination is a script (as another user with write access could)."""
    script = Destination(command="/bin/sh", args=("-c", f"touch {marker}; sleep 5"))
    with Spool(spool_path) as spool:
        event = events.build_start_event(
            component_name="planted", shell_type="X", metadata=None, limits=Limits()
        )
        assert spool.append_start("local-planted", script, event, pid=None, pid_start_time=None, boot_id=None)


@pytest.mark.parametrize("how", ["directory writable by others", "spool owned by another user"])
@pytest.mark.hardening(
    item=3,
    fault="spool.path in a directory other users can write (or a spool another user owns) holds a "
    "planted pending row whose destination is a script",
    outcome="refused: `spool replay`, the agent and a shell run nothing; one log line and `status` say why",
)
def test_a_spool_another_user_could_write_is_refused(
    tmp_path: Path, other_user: pwd.struct_passwd, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = tmp_path / "team"
    team.mkdir()
    scene = Scene(tmp_path, spool__path=str(team / "spool.sqlite3"))
    scene.spool_path = team / "spool.sqlite3"
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    marker = tmp_path / "ran-as-victim"
    plant_script_row(scene.spool_path, marker)
    if how == "directory writable by others":
        os.chmod(team, 0o1777)
    else:
        for path in team.iterdir():
            os.chown(path, other_user.pw_uid, other_user.pw_gid)
    replay = scene.run("spool", "replay", "--spool", str(scene.spool_path))
    assert replay.returncode == 1
    assert "refused" in replay.stderr and "another user could have written it" in replay.stderr
    agent = scene.agent()
    _, err = agent.communicate(timeout=WAIT_SECONDS)
    assert agent.returncode == 1 and "refusing to deliver" in err
    shell = subprocess.run(
        [sys.executable, "-c", REFUSED_SHELL],
        env=scene.env,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        cwd=tmp_path,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["None", "False"]  # nothing recorded, and the shell carried on
    assert shell.stderr.count("refused") == 1, shell.stderr  # one clear line for the start and the end
    status = scene.run("status")
    assert status.returncode == 0
    assert "warning: spool refused:" in status.stdout
    time.sleep(1.0)  # sleep-ok: give a wrongly started script the time to leave its mark
    assert not marker.exists()
    assert not wakeup.agent_holds_lock(scene.spool_path)


@pytest.mark.hardening(
    item=3,
    fault="a package named oneiric_session is dropped in the spool's directory, then a shell spawns "
    "the agent (which launches the bundled server with `python -m`)",
    outcome="neither the agent nor the server imports it (`-P`, cwd /); the sessions are delivered",
)
def test_a_package_in_the_spool_directory_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = Scene(tmp_path, agent__idle_exit_seconds=60)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    state = scene.spool_path.parent
    state.mkdir(mode=0o700, parents=True)
    marker = tmp_path / "planted-package-ran"
    package = state / "oneiric_session"
    package.mkdir()
    code = f"open({str(marker)!r}, 'a').write('imported\\n')\n"
    (package / "__init__.py").write_text(code)
    (package / "__main__.py").write_text(code)
    try:
        scene.run_shell(1)
        wait_until(lambda: marker.exists() or len(scene.sessions()) == 1, what="delivery (or the plant)")
        assert not marker.exists()
        assert scene.sessions()[0]["status"] == "ended"
    finally:
        scene.stop_agents()


@pytest.mark.hardening(
    item=3,
    fault="spool.sqlite3.lock and spool.sqlite3.agent.log are symlinks to a file elsewhere",
    outcome="the agent follows neither (O_NOFOLLOW): the targets are never created; it says why",
)
def test_private_files_are_never_opened_through_a_symlink(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    state = scene.spool_path.parent
    state.mkdir(mode=0o700, parents=True)
    Spool(scene.spool_path).open()
    lock_target, log_target = tmp_path / "lock-target", tmp_path / "log-target"
    wakeup.lock_path(scene.spool_path).symlink_to(lock_target)
    agent = scene.agent()
    _, err = agent.communicate(timeout=WAIT_SECONDS)
    assert agent.returncode == 1 and "is not a regular file" in err, err
    assert not lock_target.exists()
    wakeup.lock_path(scene.spool_path).unlink()
    log = wakeup.agent_log_path(scene.spool_path)
    log.symlink_to(log_target)
    agent = scene.agent("--log-file", str(log), "--idle-exit-seconds", "0.2")
    _, err = agent.communicate(timeout=WAIT_SECONDS)
    assert agent.returncode == 0 and "cannot log to" in err, err
    assert not log_target.exists()


@pytest.mark.hardening(
    item=3,
    fault="another user sends the agent's socket a wake-up carrying a token and a handover "
    "(its private directory opened up by mistake)",
    outcome="the datagram is dropped (SO_PASSCRED: only our uid), logged once; our own still counts",
)
def test_the_socket_accepts_wakeups_from_its_own_user_only(
    other_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Path(tempfile.mkdtemp(prefix="i13sec-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        run.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
        spool = base / "spool.sqlite3"
        listener = wakeup.WakeupListener(spool)
        assert listener.open()
        assert listener.path is not None
        os.chmod(run, 0o755)
        os.chmod(listener.path.parent, 0o755)
        os.chmod(listener.path, 0o666)
        datagram = wakeup.encode_wakeup({"k": "stolen-or-forged"}, handover=True)
        send = (
            "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
            "s.sendto(sys.argv[1].encode(), sys.argv[2])"
        )
        subprocess.run(
            as_user(other_user, "-c", send, datagram.decode(), str(listener.path)),
            check=True,
            timeout=WAIT_SECONDS,
        )
        time.sleep(0.1)  # sleep-ok: a datagram in flight on this host
        got = listener.drain()
        assert (got.datagrams, dict(got.tokens), got.handover) == (0, {}, False)
        assert listener.refused == 1
        os.chmod(run, 0o700)
        os.chmod(listener.path.parent, 0o700)
        assert wakeup.wake(spool, tokens={"k": "ours"})
        got = listener.drain()
        assert (got.datagrams, dict(got.tokens)) == (1, {"k": "ours"})
        listener.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.hardening(
    item=3,
    fault="/tmp/oneiric-session-UID (the socket's fallback directory) was created first by another user",
    outcome="it is never used for the socket; `status` says why it is refused",
)
def test_a_fallback_socket_directory_of_another_user_is_refused(
    tmp_path: Path, other_user: pwd.struct_passwd
) -> None:
    scene = Scene(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    planted = tmp / f"oneiric-session-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, other_user.pw_uid, other_user.pw_gid)
    env = {"XDG_RUNTIME_DIR": "", "TMPDIR": str(tmp)}
    status = scene.run("status", env=env)
    assert f"wake-up socket directory {planted} refused: it belongs to another user" in status.stdout
    scene.env.update(env)
    scene.run_shell(1)  # no usable socket directory: the agent still delivers (it polls the spool)
    wait_until(lambda: len(scene.sessions()) == 1, what="delivery")
    assert list(planted.iterdir()) == []
    scene.stop_agents()


def test_a_read_only_check_of_a_path_of_ours_is_the_projects_own_logic(
    tmp_path: Path, other_user: pwd.struct_passwd
) -> None:
    """foreign_reason, the logic (not the kernel, which root bypasses): who owns and who can write."""
    spool = tmp_path / "d" / "spool.sqlite3"
    assert privacy.foreign_reason(spool) is None  # missing: created by us, 0700
    spool.parent.mkdir()
    spool.write_bytes(b"")
    assert privacy.foreign_reason(spool) is None
    os.chmod(spool.parent, 0o775)
    os.chown(spool.parent, -1, other_user.pw_gid)
    assert "writable by other users" in (privacy.foreign_reason(spool) or "")
    os.chmod(spool.parent, 0o755)
    os.chown(spool, other_user.pw_uid, -1)
    assert "belongs to another user" in (privacy.foreign_reason(spool) or "")


# -- 16. one spool, one deliverer ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["symlinked spool path", "lock file deleted"])
@pytest.mark.hardening(
    item=16,
    fault="while an agent delivers 40 events to a slow server, `spool replay` runs through a symlinked "
    "spool path, or after `rm spool.sqlite3.lock`",
    outcome="one deliverer at a time (the lock by real path plus an owner claim in the spool): "
    "none of the 40 is sent twice",
)
def test_one_spool_file_has_one_deliverer_however_named(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = Scene(tmp_path, agent__idle_exit_seconds=60)
    log = tmp_path / "requests.jsonl"
    proxied_bundled_server(scene, log, scene.db, delay=0.15)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    fill(scene, 20)
    agent = scene.agent()
    try:
        wait_until(lambda: len(tool_calls(log)) >= 3, what="the agent to be delivering")
        path = scene.spool_path
        if how == "symlinked spool path":
            path = tmp_path / "link.sqlite3"
            path.symlink_to(scene.spool_path)
        else:
            wakeup.lock_path(scene.spool_path).unlink()
        replay = scene.run("spool", "replay", "--spool", str(path))
        assert replay.returncode == 0, replay.stderr
        wait_until(lambda: scene.depth() == 0, what="every event delivered")
    finally:
        agent.terminate()
        agent.wait(timeout=WAIT_SECONDS)
    sent = Counter(
        (
            c["params"]["name"],
            c["params"]["arguments"].get("event_id") or c["params"]["arguments"]["session_id"],
        )
        for c in tool_calls(log)
    )
    twice = {k: n for k, n in sent.items() if n > 1}
    assert not twice, f"{len(twice)} event(s) sent more than once"
    assert len(sent) == 40
    rows = session_rows(scene.db)
    assert len(rows) == 20 and all(r["status"] == "ended" for r in rows)
    assert process_gone(agent.pid)
