"""The wake-up socket, the agent lock and the detached spawn (oneiric_session.wakeup)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session import wakeup
from oneiric_session.wakeup import message
from oneiric_session.wakeup import spawn as spawner
from tests.support.delivery import process_gone, wait_until


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


def test_tokens_too_large_to_carry_are_said_once_and_the_agent_is_woken_without_them(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent reads at most MAX_DATAGRAM_BYTES at once: cut short, the tokens would be lost
    without a word (and a datagram too large for the socket not sent: no wake-up at all)."""
    monkeypatch.setattr(message, "_oversize_said", [], raising=False)
    spool = tmp_path / "spool.sqlite3"
    huge = {"k": {"API_KEY": "x" * (2 * wakeup.MAX_DATAGRAM_BYTES)}}
    listener = wakeup.WakeupListener(spool)
    assert listener.open()
    try:
        assert wakeup.wake(spool, tokens={"k": "t"}, secrets=huge) is True
        assert wakeup.wake(spool, tokens={"k": "t"}, secrets=huge, handover=True) is True
        assert listener.drain() == wakeup.Wakeup(2, handover=True)
    finally:
        listener.close()
    said = [r.getMessage() for r in caplog.records if "more than the delivery agent takes" in r.getMessage()]
    assert len(said) == 1 and "woken without them" in said[0]


def test_malformed_wakeups_carry_no_tokens() -> None:
    plain = wakeup.Wakeup(datagrams=1)
    assert wakeup.decode_wakeup(b"") == plain
    assert wakeup.decode_wakeup(b"not json") == plain
    assert wakeup.decode_wakeup(b"[1, 2]") == plain
    assert wakeup.decode_wakeup(b"[" * 50_000) == plain  # nested too deep: it ended the agent once
    assert wakeup.decode_wakeup(b'{"tokens": "\xff"}') == plain
    assert wakeup.decode_wakeup(b'{"tokens": {"a": 1, "b": "", "c": "t"}}').tokens == {"c": "t"}
    assert wakeup.decode_wakeup(wakeup.encode_wakeup({"k": "t"})) == wakeup.Wakeup(1, {"k": "t"})


def test_the_handoff_is_read_once_from_its_pipe_which_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    fd = spawner._handoff_pipe(wakeup.encode_wakeup({"k": "secret"}, secrets={"k": {"API_KEY": "v"}}))
    assert fd is not None
    monkeypatch.setenv(wakeup.HANDOFF_FD_ENV, str(fd))
    handed = wakeup.take_handoff()
    assert handed.tokens == {"k": "secret"} and handed.secrets == {"k": {"API_KEY": "v"}}
    assert wakeup.HANDOFF_FD_ENV not in os.environ  # so the agent's own children never see it
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    assert wakeup.take_handoff().tokens == {}
    assert spawner._handoff_pipe(b"") is None  # nothing to hand over: no pipe


def test_a_handoff_number_naming_no_pipe_is_neither_read_nor_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "not-a-pipe"
    path.write_text(wakeup.encode_wakeup({"k": "secret"}).decode())
    fd = os.open(path, os.O_RDONLY)
    try:
        for number in (str(fd), "0", "x"):
            monkeypatch.setenv(wakeup.HANDOFF_FD_ENV, number)
            assert wakeup.take_handoff().tokens == {}
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # never read
    finally:
        os.close(fd)  # still open


@pytest.mark.parametrize("shell_is", ["without_stdin", "out_of_descriptors"])
def test_the_handoff_pipe_from_a_shell_short_of_descriptors(shell_is: str) -> None:
    """A shell run with stdin closed gets the pipe's read end as fd 0, which the agent's own
    stdin (/dev/null) would cover: it is moved above 2. A shell with no descriptor left spawns
    without one (the agent gets the tokens at the next wake-up) instead of failing."""
    code = textwrap.dedent(
        """
        import json, os, sys
        from oneiric_session.wakeup import spawn
        from oneiric_session.wakeup.message import encode_wakeup
        held = []
        if sys.argv[1] == "without_stdin":
            os.close(0)
        else:
            while True:
                try:
                    held.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
        fd = spawn._handoff_pipe(encode_wakeup({"k": "t"}))
        print(json.dumps(fd if fd is None else [fd, os.read(fd, 100).decode()]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code, shell_is], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if shell_is == "without_stdin":
        fd, message = json.loads(done.stdout)
        assert fd > 2 and wakeup.decode_wakeup(message.encode()).tokens == {"k": "t"}
    else:
        assert json.loads(done.stdout) is None


def test_a_symbolic_link_where_the_spawn_marker_goes_is_replaced(
    tmp_path: Path, runtime_dir: Path, spawns: list[Path]
) -> None:
    spool = tmp_path / "spool.sqlite3"
    marker = wakeup.spawn_marker_path(spool)
    marker.symlink_to(tmp_path / "nowhere")
    assert [wakeup.wake_or_spawn(spool) for _ in range(3)] == ["spawned", "starting", "starting"]
    assert len(spawns) == 1 and stat.S_ISREG(marker.lstat().st_mode)


def test_a_spawned_agent_gets_its_tokens_through_a_pipe_never_its_environment(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """/proc/<pid>/environ shows a process's initial environment for its whole life (to its user,
    and in a core dump): a token handed over in it would stay readable there after the agent took it."""
    spool = tmp_path / "spool.sqlite3"
    pid = wakeup.spawn_agent(
        spool,
        tokens={"k": "tok-in-a-pipe"},
        secrets={"k": {"API_KEY": "secret-in-a-pipe"}},
        idle_exit_seconds=1,
    )
    assert pid is not None
    try:
        # Its pid is said as it is started (by `sh`, in the background): read its environment once
        # it runs Python.
        python = os.fsencode(sys.executable)
        wait_until(
            lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(python + b"\0"), what="the exec"
        )
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"-in-a-pipe" not in environ
        assert wakeup.HANDOFF_FD_ENV.encode() + b"=" in environ
    finally:
        wait_until(lambda: process_gone(pid), what="the spawned agent to exit")


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


# -- one spawn for many shells ------------------------------------------------------------


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """spawn_agent replaced by a recorder that "starts" a live process (this one)."""
    calls: list[Path] = []

    def fake_spawn(spool_path: Path, *, tokens: object = None, idle_exit_seconds: object = None) -> int:
        calls.append(spool_path)
        return os.getpid()

    monkeypatch.setattr(spawner, "spawn_agent", fake_spawn)  # wake_or_spawn calls spawn's own
    return calls


def test_shells_finding_nobody_listening_spawn_once_while_the_agent_starts(
    tmp_path: Path, runtime_dir: Path, spawns: list[Path]
) -> None:
    """The first shell spawns and leaves a marker; the others leave the start to that agent."""
    spool = tmp_path / "spool.sqlite3"
    results = [wakeup.wake_or_spawn(spool) for _ in range(20)]
    assert results == ["spawned"] + ["starting"] * 19
    assert len(spawns) == 1
    marker = wakeup.spawn_marker_path(spool)
    assert marker.read_text() == str(os.getpid())  # the spawned agent's pid

    wakeup.clear_spawn_marker(spool)  # the agent reached for the lock: a later shell spawns again
    assert wakeup.wake_or_spawn(spool) == "spawned"
    assert len(spawns) == 2


def test_no_spawn_while_an_agent_holds_the_lock(
    tmp_path: Path, runtime_dir: Path, spawns: list[Path]
) -> None:
    """An agent holding the lock but not yet listening (or handing over) reads the spool itself."""
    spool = tmp_path / "spool.sqlite3"
    lock = wakeup.AgentLock(spool)
    assert lock.acquire()
    try:
        assert wakeup.wake_or_spawn(spool) == "starting"
        assert spawns == []
        assert not wakeup.spawn_marker_path(spool).exists()
    finally:
        lock.release()
    assert wakeup.wake_or_spawn(spool) == "spawned"


def test_a_stale_or_orphaned_spawn_marker_does_not_stop_the_next_spawn(
    tmp_path: Path, runtime_dir: Path, spawns: list[Path]
) -> None:
    """A marker older than SPAWN_STALE_SECONDS, or naming a dead agent, is replaced by a new spawn."""
    spool = tmp_path / "spool.sqlite3"
    marker = wakeup.spawn_marker_path(spool)
    marker.write_text("")  # a shell between creating it and spawning: fresh, respected
    assert wakeup.wake_or_spawn(spool) == "starting"
    old = marker.stat().st_mtime - wakeup.SPAWN_STALE_SECONDS - 1
    os.utime(marker, (old, old))
    assert wakeup.wake_or_spawn(spool) == "spawned"

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    marker.write_text(str(dead.pid))  # a fresh marker whose agent died before reaching the lock
    assert wakeup.wake_or_spawn(spool) == "spawned"
    assert len(spawns) == 2


def test_a_spawn_marker_naming_a_zombie_does_not_stop_the_next_spawn(
    tmp_path: Path, runtime_dir: Path, spawns: list[Path]
) -> None:
    """An agent killed before it reached the lock stays a zombie until the shell that spawned it
    reaps it (maybe only at that shell's exit): it is gone, and the next shell spawns."""
    spool = tmp_path / "spool.sqlite3"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # our child: a zombie until we wait
    try:
        wait_until(
            lambda: process_gone(zombie.pid) and os.path.exists(f"/proc/{zombie.pid}"), what="a zombie"
        )
        wakeup.spawn_marker_path(spool).write_text(str(zombie.pid))
        assert wakeup.wake_or_spawn(spool) == "spawned"
        assert len(spawns) == 1
    finally:
        zombie.wait(timeout=30)


def test_a_failed_spawn_leaves_no_marker(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool.sqlite3"
    monkeypatch.setattr(spawner, "spawn_agent", lambda spool_path, **_: None)
    assert wakeup.wake_or_spawn(spool) == "failed"
    assert not wakeup.spawn_marker_path(spool).exists()


def test_a_spawning_shell_names_itself_in_the_marker_then_its_agent(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell killed while it spawns leaves a marker naming a dead process: the next shell spawns
    at once instead of waiting out SPAWN_STALE_SECONDS with nobody delivering."""
    spool = tmp_path / "spool.sqlite3"
    marker = wakeup.spawn_marker_path(spool)
    seen: list[str] = []

    def spawn(spool_path: Path, **_: object) -> int:
        seen.append(marker.read_text())
        return 1  # init: some live process, with a pid shorter than this one's

    monkeypatch.setattr(spawner, "spawn_agent", spawn)
    assert wakeup.wake_or_spawn(spool) == "spawned"
    assert seen == [str(os.getpid())] and marker.read_text() == "1"


def test_a_spawn_that_raises_leaves_no_marker(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool.sqlite3"

    def interrupted(spool_path: Path, **_: object) -> int:
        raise KeyboardInterrupt  # Ctrl-C in the shell while it spawns

    monkeypatch.setattr(spawner, "spawn_agent", interrupted)
    with pytest.raises(KeyboardInterrupt):
        wakeup.wake_or_spawn(spool)
    assert not wakeup.spawn_marker_path(spool).exists()


def test_a_look_at_the_lock_never_turns_an_agent_away(tmp_path: Path) -> None:
    """`status` and shells look with a shared flock held for a moment; an agent reaching for the lock
    in that moment tries again instead of concluding that another agent delivers (and exiting)."""
    import fcntl

    spool = tmp_path / "spool.sqlite3"
    first = wakeup.AgentLock(spool)
    assert first.acquire()  # makes the lock file
    first.release()
    look = os.open(wakeup.lock_path(spool), os.O_RDONLY)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)
    pauses: list[float] = []

    def look_ends(seconds: float) -> None:  # time passing: the look is over
        pauses.append(seconds)
        os.close(look)

    lock = wakeup.AgentLock(spool, sleep=look_ends)
    try:
        assert lock.acquire() and len(pauses) == 1
    finally:
        lock.release()

    held = wakeup.AgentLock(spool)
    assert held.acquire()
    try:
        pauses.clear()
        assert wakeup.AgentLock(spool, sleep=pauses.append).acquire() is False  # an agent holds it
        assert len(pauses) == wakeup.lock.LOCK_TRIES - 1
    finally:
        held.release()


# Each process loads what a shell loads, waits for the release, then does what a shell does
# before its prompt (resolve + start) and at its exit (end).
CROWD_SHELL = textwrap.dedent(
    """
    import sys
    import oneiric_session.shell
    print("ready", flush=True)
    sys.stdin.readline()
    from oneiric_session.tracking.registry import resolve_tracker
    tracker = resolve_tracker()
    handle = tracker.start(component_name=sys.argv[1], shell_type="CrowdShell")
    assert handle is not None and tracker.end(handle)
    tracker.close()
    """
)


def test_many_shells_released_at_once_start_at_most_two_agents(tmp_path: Path) -> None:
    """Sixteen shells find no agent at the same moment: one or two agents start, every session once."""
    from tests.support.delivery import WAIT_SECONDS, Scene, wait_until

    scene = Scene(tmp_path)
    scene.run_shell(1, component="first")  # the config cache and spool exist, as after any first shell
    log = wakeup.agent_log_path(scene.spool_path)

    def first_agent_gone() -> bool:
        return log.exists() and "stopped" in log.read_text() and not wakeup.agent_holds_lock(scene.spool_path)

    wait_until(first_agent_gone, what="the first agent's idle exit")
    before = set(re.findall(r"agent\[(\d+)\]", log.read_text()))
    count = 16
    shells = [scene.popen([sys.executable, "-c", CROWD_SHELL, f"crowd{n}"]) for n in range(count)]
    try:
        for shell in shells:
            assert shell.stdout is not None and shell.stdout.readline().strip() == "ready"
        for shell in shells:
            assert shell.stdin is not None
            shell.stdin.write("\n")
            shell.stdin.flush()
        for shell in shells:
            _, err = shell.communicate(timeout=WAIT_SECONDS)
            assert shell.returncode == 0, err
        wait_until(lambda: scene.depth() == 0, what="the spool to drain")
        started = set(re.findall(r"agent\[(\d+)\]", log.read_text())) - before
        assert 1 <= len(started) <= 2, started
        crowd = [s for s in scene.sessions() if str(s["component_name"]).startswith("crowd")]
        assert sorted(s["component_name"] for s in crowd) == sorted(f"crowd{n}" for n in range(count))
        assert all(s["status"] == "ended" for s in crowd)
    finally:
        for shell in shells:
            if shell.poll() is None:
                shell.kill()
        scene.stop_agents()


def test_a_fifo_where_the_spawn_marker_goes_never_holds_a_shell(tmp_path: Path) -> None:
    """The marker is read without blocking: a FIFO there is no marker a shell made, and is replaced."""
    spool = tmp_path / "spool.sqlite3"
    os.mkfifo(wakeup.spawn_marker_path(spool), 0o600)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    shell = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from oneiric_session.wakeup import spawn, waker
        spawn.spawn_agent = lambda spool_path, **_: os.getpid()  # no agent: the spawn is what is looked at
        print(waker.wake_or_spawn(Path(sys.argv[1])), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", shell, str(spool)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(run)},
        capture_output=True,
        text=True,
        timeout=20,  # blocked for good before the fix: a TimeoutExpired, not a hang of the suite
    )
    assert done.stdout.strip() == "spawned", done.stderr
    assert stat.S_ISREG(wakeup.spawn_marker_path(spool).lstat().st_mode)


def test_the_agents_socket_note_is_believed_only_when_nobody_else_could_have_written_it(
    tmp_path: Path,
) -> None:
    """The note names where a wake-up (with its tokens) goes: only a regular file of ours that
    nobody else can write, of this spool (its lock file's identity), naming a socket in a private
    directory of ours."""
    from oneiric_session.wakeup.paths import lock_path, published_socket, socket_note, socket_note_path

    spool = tmp_path / "spool.sqlite3"
    lock_path(spool).touch()
    private = tmp_path / "run"
    private.mkdir(mode=0o700)
    note = socket_note_path(spool)
    note.write_text(socket_note(private / "a.sock", spool))
    note.chmod(0o600)
    assert published_socket(spool) == private / "a.sock"
    note.chmod(0o620)  # another user of the group could have written it
    assert published_socket(spool) is None
    note.chmod(0o600)
    note.write_text(socket_note(tmp_path / "a.sock", spool))  # a directory others may enter
    tmp_path.chmod(0o755)
    assert published_socket(spool) is None
    note.write_text(socket_note(Path("run/a.sock"), spool))  # relative
    assert published_socket(spool) is None
    note.write_text(str(private / "a.sock"))  # of no lock file: not this spool's
    assert published_socket(spool) is None
    note.unlink()
    note.symlink_to(private / "elsewhere")
    assert published_socket(spool) is None


@pytest.fixture
def odd_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory whose name is not UTF-8 (a Latin-1 name), and no XDG_RUNTIME_DIR."""
    base = tempfile.mkdtemp(prefix="k-", dir="/tmp")
    odd = os.path.join(os.fsencode(base), b"caf\xe9")
    os.mkdir(odd, 0o700)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", os.fsdecode(odd))
    for name in ("TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    yield Path(os.fsdecode(odd))
    shutil.rmtree(base, ignore_errors=True)


def test_an_agent_whose_socket_path_is_not_utf8_still_listens(tmp_path: Path, odd_tmpdir: Path) -> None:
    """A socket path that is not UTF-8 (a Latin-1 $TMPDIR) raised UnicodeEncodeError out of open()
    as the agent wrote its note: the agent died where before it listened (review H)."""
    spool = tmp_path / "spool.sqlite3"
    listener = wakeup.WakeupListener(spool)
    assert listener.path is not None and listener.path.parent.parent == odd_tmpdir
    try:
        assert listener.open()
        assert wakeup.wake(spool)
    finally:
        listener.close()


def test_a_note_naming_another_spools_agent_does_not_stand_in_for_this_spools(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """A spool's directory copied or restored elsewhere (`cp -a`, a backup) carries its note: the
    copy's shells found nobody at their own socket, sent to the socket the note names, which the
    original spool's agent still listens on, and were told "woken": no agent is ever spawned for
    the copy, and its events wait as long as the other agent lives. The note names the spool's
    lock file by its identity: a copy's is another file."""
    original = tmp_path / "a" / "spool.sqlite3"
    copy = tmp_path / "b" / "spool.sqlite3"
    original.parent.mkdir()
    copy.parent.mkdir()
    lock = wakeup.AgentLock(original)
    assert lock.acquire()
    listener = wakeup.WakeupListener(original)
    try:
        assert listener.open()
        for name in (wakeup.paths.socket_note_path, wakeup.paths.lock_path):  # copied with its files
            shutil.copy2(name(original), name(copy))
        assert wakeup.socket_path(copy) != listener.path
        assert not wakeup.wake(copy), "the copy's wake-up reached the original spool's agent"
        assert wakeup.wake(original)
    finally:
        listener.close()
        lock.release()


# Review of the spawn through `sh` (review I): each of these failed on its first version.


def test_an_agent_that_cannot_be_executed_is_a_failed_spawn(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, Popen raised (exec failed) and the spawn said None / "failed" (CLI exit 1, marker
    removed). Through sh the exec fails in sh's background child, after sh said its pid: the spawn
    says "spawned", the marker names a process that never ran, `oneiric-session agent` exits 0.
    (An interpreter removed under a long-running host: a venv rebuilt, a pyenv/uv uninstall.)"""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "gone" / "python3"))
    spool = tmp_path / "spool.sqlite3"
    assert wakeup.spawn_agent(spool) is None
    assert wakeup.wake_or_spawn(spool) == "failed"


def test_a_sh_that_cannot_be_run_still_spawns_the_agent(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`os.path.exists(_SH)` is the only test: a /bin/sh this user may not execute (a hardened
    image: mode 0700 root, a noexec/nosuid policy, an LSM) makes every spawn fail, where running
    the agent directly (the fallback a missing sh gets) would work."""
    sh = tmp_path / "sh"
    sh.write_text("#!/bin/false\n")
    sh.chmod(0o644)  # exists, not executable
    monkeypatch.setattr(spawner, "_SH", str(sh))
    pid = wakeup.spawn_agent(tmp_path / "spool.sqlite3", idle_exit_seconds=1)
    try:
        assert pid is not None
    finally:
        if pid:
            wait_until(lambda: process_gone(pid), what="the agent to exit")


def _ignored(pid: int) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigIgn")).split()[1], 16)
    return {signal.Signals(s).name for s in signal.valid_signals() if 0 < s < 65 and mask >> (s - 1) & 1}


def test_the_spawned_agent_does_not_run_with_sigquit_ignored(tmp_path: Path, runtime_dir: Path) -> None:
    """A non-interactive sh starts a `&` job with SIGINT and SIGQUIT ignored (POSIX). Ignored
    dispositions survive exec: Python then installs no KeyboardInterrupt handler, so SIGINT is
    ignored through the agent's start-up (until run_agent's loop handler), and SIGQUIT stays
    ignored for the agent's whole life, and in every server it launches (exec keeps SIG_IGN)."""
    spool = tmp_path / "spool.sqlite3"
    pid = wakeup.spawn_agent(spool, idle_exit_seconds=1)
    assert pid is not None
    try:
        wait_until(lambda: wakeup.wake(spool), what="the agent to listen")
        assert "SIGQUIT" not in _ignored(pid), _ignored(pid)
    finally:
        wait_until(lambda: process_gone(pid), what="the agent to exit")


SUBREAPER_HOST = textwrap.dedent(
    """
    import ctypes, os, sys, time
    from pathlib import Path
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER (PID 1 of a container)
    from oneiric_session import wakeup
    spool = Path(sys.argv[1])
    pid = wakeup.spawn_agent(spool, idle_exit_seconds=1)
    deadline = time.monotonic() + 40
    state = "?"
    zombie_seen = False
    while time.monotonic() < deadline:  # the host carries on; the agent idles out
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "reaped"
            break
        if state == "Z" and zombie_seen:
            break
        zombie_seen = state == "Z"
        wakeup.wake(spool)  # the host's next session: what it spawned and exited is waited for
        time.sleep(0.1)  # sleep-ok: polling a real process
    print(state)
    """
)


def test_a_host_that_is_a_subreaper_keeps_no_zombie_agent(tmp_path: Path, runtime_dir: Path) -> None:
    """The orphaned agent is reparented to the nearest subreaper, not to init: a host that is one
    (a service run as PID 1 in a container, `python app.py` as CMD; a supervisor using
    PR_SET_CHILD_SUBREAPER) gets the agent back as its child, and nothing waits for it any more
    (the reaper thread of review D is gone): each idled-out agent stayed a zombie for the host's life.
    It is now waited for at the host's next wake-up (until then it is a zombie: a subreaper's lot)."""
    done = subprocess.run(
        [sys.executable, "-c", SUBREAPER_HOST, str(tmp_path / "spool.sqlite3")],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reaped"


def test_an_exported_shell_function_cannot_change_the_pid_said(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /bin/sh is bash (Fedora, RHEL, Arch; bash in POSIX mode as `sh`), functions exported in
    the environment are imported: an exported `echo` (a user's `export -f echo`) prints what it
    likes. Simulated with a `sh` symlink to bash (same argv[0] basename, so POSIX mode)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    sh = tmp_path / "bin" / "sh"
    sh.parent.mkdir()
    sh.symlink_to(bash)
    monkeypatch.setattr(spawner, "_SH", str(sh))
    monkeypatch.setenv("BASH_FUNC_echo%%", "() { builtin echo 1; }")
    pid = wakeup.spawn_agent(tmp_path / "spool.sqlite3", idle_exit_seconds=1)
    assert pid is not None and pid != 1, pid
    wait_until(lambda: b"oneiric_session" in Path(f"/proc/{pid}/cmdline").read_bytes(), what="the exec")
    wait_until(lambda: process_gone(pid), what="the agent to exit")


def test_a_spool_path_with_spaces_and_newlines_is_passed_whole(runtime_dir: Path) -> None:
    """(Passes: "$@" keeps every argument whole.)"""
    base = tempfile.mkdtemp(prefix="odd-", dir="/tmp")
    spool = Path(base) / 'a b\n$(x) "q" *' / "spool.sqlite3"
    spool.parent.mkdir(mode=0o700)
    try:
        pid = wakeup.spawn_agent(spool, idle_exit_seconds=1)
        assert pid is not None
        wait_until(lambda: wakeup.wake(spool), what="the agent to listen")
        assert os.fsencode(spool) in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        wait_until(lambda: process_gone(pid), what="the agent to exit")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_spool_path_that_is_not_utf8_can_be_woken(runtime_dir: Path) -> None:
    """PRE-EXISTING (28a2d83), found here: `_socket_name` hashes `realpath(...).encode()`, strict
    UTF-8: a Latin-1 spool directory raises UnicodeEncodeError out of wake()/wake_or_spawn() at
    every event (a shell logs "could not wake the delivery agent" and never spawns one), and the
    agent gets no socket. 3ec7508 made the note tolerate a non-UTF-8 *socket* path only."""
    base = tempfile.mkdtemp(prefix="odd-", dir="/tmp")
    odd = os.path.join(os.fsencode(base), b"caf\xe9")
    os.mkdir(odd, 0o700)
    spool = Path(os.fsdecode(odd)) / "spool.sqlite3"
    try:
        assert wakeup.socket_path(spool) is not None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_relative_runtime_and_temporary_directories_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative $XDG_RUNTIME_DIR made the shell's socket directory and the agent's (it runs in /)
    two different ones, so the agent was never woken; a relative $TMPDIR in a deleted working
    directory raised out of every wake-up, so no agent was ever started (review L). The XDG spec:
    a relative value is ignored."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "run")
    monkeypatch.setenv("TMPDIR", "tmp")
    spool = tmp_path / "spool.sqlite3"
    private_tmp = Path("/tmp") / f"oneiric-session-{os.getuid()}"
    path = wakeup.socket_path(spool)
    assert path is not None and path.parent == private_tmp
    assert list(here.iterdir()) == []  # nothing made below the working directory
    here.rmdir()  # now the working directory is gone
    assert wakeup.socket_path(spool) is not None
    assert wakeup.socket_dir_problems() == []
    assert wakeup.wake(spool) is False  # nobody listens: said, not raised
