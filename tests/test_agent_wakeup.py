"""The wake-up socket, the agent lock and the detached spawn (oneiric_session.wakeup)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session import wakeup


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR (tmp_path can be too long for a socket path)."""
    run = Path(tempfile.mkdtemp(prefix="run-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    yield run
    shutil.rmtree(run, ignore_errors=True)


def test_socket_lives_in_a_private_directory_with_a_short_path(tmp_path: Path, runtime_dir: Path) -> None:
    """Even a spool path far beyond sun_path's 108 bytes gets a short socket in a 0700 directory."""
    spool = tmp_path / ("d" * 200) / "spool.sqlite3"
    path = wakeup.socket_path(spool)
    assert path is not None
    assert len(os.fsencode(path)) <= 107
    assert path.parent == runtime_dir / "oneiric-session"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert wakeup.socket_path(spool) == path
    assert wakeup.socket_path(tmp_path / "other.sqlite3") != path


def test_a_runtime_dir_too_long_for_a_socket_falls_back_to_a_private_tmp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("r" * 120)))
    path = wakeup.socket_path(tmp_path / "spool.sqlite3")
    assert path is not None
    assert path.parent == Path(tempfile.gettempdir()) / f"oneiric-session-{os.getuid()}"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_directory_others_can_enter_is_not_used(tmp_path: Path, runtime_dir: Path) -> None:
    """A socket directory readable by others is skipped: tokens travel only through private ones."""
    (runtime_dir / "oneiric-session").mkdir(mode=0o755)
    os.chmod(runtime_dir / "oneiric-session", 0o755)
    path = wakeup.socket_path(tmp_path / "spool.sqlite3")
    assert path is None or path.parent != runtime_dir / "oneiric-session"


def test_wake_reaches_a_listener_with_tokens(tmp_path: Path, runtime_dir: Path) -> None:
    """Without a listener wake() says so; with one, each datagram arrives with its tokens."""
    spool = tmp_path / "spool.sqlite3"
    assert wakeup.wake(spool) is False
    listener = wakeup.WakeupListener(spool)
    assert listener.open()
    try:
        assert stat.S_IMODE(os.stat(listener.path).st_mode) == 0o600
        assert wakeup.wake(spool) is True
        assert wakeup.wake(spool, tokens={"k1": "old"}) is True
        assert wakeup.wake(spool, tokens={"k1": "new", "k2": "other"}) is True
        assert wakeup.wake(spool, handover=True) is True
        assert listener.drain() == wakeup.Wakeup(4, {"k1": "new", "k2": "other"}, handover=True)
        assert listener.drain() == wakeup.Wakeup()
    finally:
        listener.close()
    assert not listener.path.exists()
    assert wakeup.wake(spool) is False


def test_malformed_wakeups_carry_no_tokens() -> None:
    plain = wakeup.Wakeup(count=1)
    assert wakeup.decode_wakeup(b"") == plain
    assert wakeup.decode_wakeup(b"not json") == plain
    assert wakeup.decode_wakeup(b"[1, 2]") == plain
    assert wakeup.decode_wakeup(b'{"tokens": {"a": 1, "b": "", "c": "t"}}').tokens == {"c": "t"}
    assert wakeup.decode_wakeup(wakeup.encode_wakeup({"k": "t"})) == wakeup.Wakeup(1, {"k": "t"})


def test_tokens_pass_to_a_spawned_agent_through_its_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable is read once and removed, so the agent's own children never inherit it."""
    monkeypatch.setenv(wakeup.TOKENS_ENV, '{"k": "secret", "x": 3}')
    assert wakeup.tokens_from_environment() == {"k": "secret"}
    assert wakeup.TOKENS_ENV not in os.environ
    assert wakeup.tokens_from_environment() == {}


def test_the_lock_admits_one_agent_across_processes(tmp_path: Path) -> None:
    """A process holding the lock keeps others out until it dies; the kernel releases it on death."""
    spool = tmp_path / "spool.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from oneiric_session.wakeup import AgentLock
                lock = AgentLock(Path({str(spool)!r}))
                assert lock.acquire()
                print("held", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert wakeup.agent_holds_lock(spool)
        lock = wakeup.AgentLock(spool)
        assert lock.acquire() is False
        holder.kill()
        holder.wait(timeout=10)
        assert not wakeup.agent_holds_lock(spool)
        assert lock.acquire() is True
        assert wakeup.agent_holds_lock(spool) is True
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
