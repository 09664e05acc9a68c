"""Starting the agent when nobody listens, for a shell (standard library only): one agent for
many shells, and the tokens and secret values handed to it (loaded only when a wake-up found
nobody listening: a shell that wakes a running agent never loads it).

The spawned agent's process runs the two functions that take over what its shell handed it:
`take_handoff` (the tokens and secret values, through a pipe only it inherits) and
`clear_spawn_marker`. The shell spawns the agent detached and never waits for it.

Many shells starting at once must not each spawn an agent (each costs a Python start
on a machine busy starting shells). A shell that finds nobody listening spawns only
when no agent holds the lock and no other spawn is under way: a marker file, created
exclusively by the spawning shell, naming that shell and then the agent it spawned, and
removed by the spawned agent just before it reaches for the lock (a marker naming a dead
process, or older than SPAWN_STALE_SECONDS, is replaced by the next spawn).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from oneiric_session.wakeup.message import Wakeup, carried, decode_wakeup, encode_wakeup
from oneiric_session.wakeup.paths import agent_log_path, spawn_marker_path

__all__ = [
    "HANDOFF_FD_ENV",
    "SPAWN_STALE_SECONDS",
    "clear_spawn_marker",
    "reap_spawned",
    "spawn_agent",
    "spawn_unless_under_way",
    "take_handoff",
]

# The number of the spawned agent's inherited descriptor holding what its shell handed over (the
# tokens and secret server.env values, as one wake-up message). A pipe, not the environment: a
# process's initial environment stays readable in /proc/<pid>/environ for its whole life.
HANDOFF_FD_ENV = "ONEIRIC_SESSION_AGENT_HANDOFF_FD"

# Past this age a spawn marker is stale (its shell or agent died before the agent reached for the
# lock): the next shell spawns. Long enough for an agent's Python to start on a loaded 2-core machine.
SPAWN_STALE_SECONDS = 5.0


def spawn_unless_under_way(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    idle_exit_seconds: float | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> Literal["spawned", "starting", "failed"]:
    """Spawn the agent of this spool unless another spawn is under way (the spawn marker, see the
    module doc): "spawned", "starting" (another is under way), or "failed"."""
    marker = spawn_marker_path(spool_path)
    try:
        fd = _claim_spawn(marker)
    except OSError:
        fd = -1  # no marker possible: spawn anyway (a second agent exits at once)
    if fd is None:
        return "starting"
    extra = {"secrets": secrets} if secrets else {}  # (only then: callers may stand in for spawn_agent)
    pid = None
    try:
        if fd >= 0:  # this shell's pid until the agent's: killed while spawning, it leaves a stale marker
            with contextlib.suppress(OSError):
                os.write(fd, str(os.getpid()).encode())
        pid = spawn_agent(spool_path, tokens=tokens, idle_exit_seconds=idle_exit_seconds, **extra)
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                if pid is None:
                    os.unlink(marker)
                else:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(pid).encode(), 0)
            os.close(fd)
    return "spawned" if pid is not None else "failed"


def spawn_agent(
    spool_path: Path,
    *,
    tokens: Mapping[str, str] | None = None,
    idle_exit_seconds: float | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> int | None:
    """Start an agent for this spool, detached; its pid, or None. Never waits for it (only for the
    `sh` that starts it, about a millisecond).

    The tokens and secret values go through a pipe only it inherits (`take_handoff`). It runs in "/"
    with `-P`, so neither the working
    directory of the shell that happened to start it (never pinned, never reported from) nor the
    spool's directory (maybe a team directory others can write) is on its import path, nor on the
    import path of a server it launches with `python -m` and no `server.cwd`.
    """
    import subprocess  # only when no agent listens: a shell that wakes one never pays for it

    env = dict(os.environ)
    env.pop(HANDOFF_FD_ENV, None)
    handoff = _handoff_pipe(carried(encode_wakeup(tokens, secrets=secrets), handover=False))
    if handoff is not None:
        env[HANDOFF_FD_ENV] = str(handoff)
    spool_path = Path(os.path.abspath(spool_path))  # the agent runs in "/"
    # -P: the cwd is not put first on sys.path (and "/" is no attacker's directory anyway).
    argv = [sys.executable, "-P", "-m", "oneiric_session", "agent", "--foreground"]
    argv += ["--spool", str(spool_path)]
    argv += ["--log-file", str(agent_log_path(spool_path))]
    if idle_exit_seconds is not None:  # the spawning shell's setting: the agent has no settings dir
        argv += ["--idle-exit-seconds", repr(float(idle_exit_seconds))]
    if not os.access(sys.executable, os.X_OK):
        return None  # (an interpreter removed under a long-running host): no agent would run
    # Started by a shell that exits at once (`sh`), the agent is no child of this process: a host
    # that outlives its sessions (a service, a notebook) keeps no zombie of it and no thread to
    # wait for it, and a host's own wait() never takes it. This process waits for `sh` alone, which
    # says the agent's pid and leaves (~1 ms); without a `sh` it may run, the agent is its child.
    launches = [[_SH, "-c", _LAUNCH, "oneiric-session-spawn", *argv]] if os.access(_SH, os.X_OK) else []
    child = None
    for launch in [*launches, argv]:
        with contextlib.suppress(OSError):
            child = subprocess.Popen(
                launch,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if launch is argv else subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if handoff is None else (handoff,),
                env=env,
                cwd="/",
            )
            break
    if handoff is not None:
        os.close(handoff)
    if child is None:
        return None
    if child.stdout is None:  # the agent itself
        pid = child.pid
    else:
        with child.stdout:
            said = child.stdout.readline().strip()
        child.wait()
        if not said.isdigit():
            return None
        pid = int(said)
    _spawned.append(pid)  # a host that is a subreaper (PID 1 of a container) gets it back: see waker.wake()
    return pid


def reap_spawned() -> None:
    """Wait for the agents this process spawned that exited, without blocking. They are a host's
    children only when it is a subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`, PID 1 of a container),
    or without a `sh`; otherwise the kernel says they are not, and they are forgotten."""
    for pid in list(_spawned):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _spawned.remove(pid)


# The launcher: the agent in the background, its standard streams /dev/null, its pid said
# (`command`: an exported shell function named printf is not used).
_SH = "/bin/sh"
_LAUNCH = '"$@" </dev/null >/dev/null 2>&1 & command printf "%s\\n" "$!"'
# Agents this process spawned, until they exited (`_reap_spawned`).
_spawned: list[int] = []


def _marker_is_stale(marker: Path) -> bool:
    """True when the marker is too old, or names a shell or agent that is gone (or dead, not reaped)."""
    try:
        # Never blocks (a FIFO put there would hold a shell before its prompt for good), never follows.
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return True  # a symbolic link: no marker a shell made, replaced
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return True  # no marker a shell made: replaced
        age = time.time() - st.st_mtime
        text = os.read(fd, 32)
    finally:
        os.close(fd)
    if not -SPAWN_STALE_SECONDS < age < SPAWN_STALE_SECONDS:
        return True
    if not text.strip().isdigit():
        return False  # its shell is between creating it and writing its pid: fresh enough
    from oneiric_session.tracking.procinfo import is_alive  # only when a marker is there

    # A zombie is gone too: an agent killed before it reached the lock stays one until the shell
    # that spawned it (this process or another) reaps it, maybe only at that shell's exit.
    return not is_alive(int(text), None, None)


def _claim_spawn(marker: Path) -> int | None:
    """Create the marker exclusively: its descriptor, or None when another spawn is under way.

    A stale marker is replaced (two shells replacing one at once may both spawn: harmless).
    Raises OSError when the marker cannot be created at all.
    """
    for _ in range(2):
        try:
            return os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not _marker_is_stale(marker):
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
    return None


def clear_spawn_marker(spool_path: Path) -> None:
    """The spawned agent's first act, just before it reaches for the lock (see the module doc)."""
    with contextlib.suppress(OSError):
        os.unlink(spawn_marker_path(spool_path))


def _handoff_pipe(message: bytes) -> int | None:
    """The read end of a pipe holding `message` whole, its write end closed; None for nothing to
    hand over, or a message larger than a pipe holds (the agent then gets it at the next wake-up)."""
    if not message:
        return None
    try:
        read, write = os.pipe()
    except OSError:  # no descriptor left: the agent gets them at the next wake-up
        return None
    try:
        if read <= 2:  # this shell runs with stdin, stdout or stderr closed: the agent's would cover it
            import fcntl

            read, low = fcntl.fcntl(read, fcntl.F_DUPFD_CLOEXEC, 3), read
            os.close(low)
        os.set_blocking(write, False)
        view = memoryview(message)
        while view:
            view = view[os.write(write, view) :]
    except OSError:
        os.close(read)
        return None
    finally:
        os.close(write)
    return read


def take_handoff() -> Wakeup:
    """What the spawning shell handed this agent over (tokens, secret values), read whole from the
    inherited pipe, which is closed; a plain wake-up when there is none. Taken once."""
    number = os.environ.pop(HANDOFF_FD_ENV, "")
    if not number.isdigit() or int(number) < 3:
        return decode_wakeup(b"")
    fd = int(number)
    try:
        pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        pipe = False
    if not pipe:
        return decode_wakeup(b"")  # not the pipe a shell made: neither read nor closed
    chunks: list[bytes] = []
    try:
        os.set_blocking(fd, False)  # its writer closed its end: all there is reads at once
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        chunks = []  # another writer holds it open: not the pipe a shell made
    finally:
        os.close(fd)
    return decode_wakeup(b"".join(chunks))
