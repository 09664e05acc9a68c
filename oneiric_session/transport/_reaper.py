"""Launcher that ties a stdio MCP server's life to ours: `python -I -S _reaper.py -- COMMAND ARGS...`.

Run by path (not `-m`) so it imports nothing but the standard library. The
client starts it as the leader of a new session; it spawns the server as its
child (same process group, same stdin/stdout) and waits. When the client dies
in any way, even SIGKILL, the kernel sends this process SIGHUP (Linux:
PR_SET_PDEATHSIG; elsewhere a poll of the parent pid notices), and it ends the
whole process group: SIGTERM, a short grace, then SIGKILL. Why a launcher and
not `preexec_fn`: running Python code between fork and exec is unsafe in a
threaded client, and a launcher also reaches the server's own children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

# Time the server gets to exit after SIGTERM once the client is gone.
TERM_GRACE_SECONDS = 1.0
# Poll period where PR_SET_PDEATHSIG does not exist.
PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


class _ParentGone(Exception):
    pass


def _on_parent_gone(_signum: int, _frame: object) -> None:
    # Once is enough: the kernel sends the signal again for each thread of the dying client
    # the launcher is handed to, and a second one must not cut the group's clean-up short.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise _ParentGone


def _arm_death_signal() -> bool:
    """Ask the kernel for SIGHUP when our parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    return result == 0


def _end_group(child: int) -> None:
    """SIGTERM the group, wait briefly for the server, then SIGKILL whatever is left (us included)."""
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            if os.waitpid(child, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break
        time.sleep(0.02)
    os.killpg(0, signal.SIGKILL)


def _wait(child: int, parent: int, armed: bool) -> int:
    if armed:
        return os.waitpid(child, 0)[1]
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return status
        if os.getppid() != parent:
            raise _ParentGone
        time.sleep(PARENT_POLL_SECONDS)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        print("usage: _reaper.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[1:]
    parent = os.getppid()
    signal.signal(signal.SIGHUP, _on_parent_gone)
    # Held until the wait below, so a parent death during the spawn is handled, not lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    armed = _arm_death_signal()
    try:
        child = os.posix_spawnp(command[0], command, os.environ, setsigmask=())
    except OSError as exc:
        print(f"cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    # The server owns the pipes now; our copies would hide its exit from the client.
    os.close(0)
    os.close(1)
    # The client stops the server with SIGTERM to the group: let it reach the server, not us.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        if os.getppid() != parent:  # the client died before the death signal was armed
            raise _ParentGone
        status = _wait(child, parent, armed)
    except _ParentGone:
        _end_group(child)
        return 1
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
