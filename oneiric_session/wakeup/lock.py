"""The agent lock: which one agent delivers a spool (standard library only).

`AgentLock` is taken by the agent's process (and by a foreground `spool replay`): only its
holder binds the wake-up socket, a second agent exits at once. `agent_holds_lock` is the
cheap look a shell takes before it spawns an agent, and `status` takes to say one runs; it
never takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from oneiric_session.wakeup.paths import lock_path

if TYPE_CHECKING:
    from oneiric_session.spool import Spool

__all__ = ["AgentLock", "agent_holds_lock"]

# A held lock is tried this many times, this far apart (a look holds it for microseconds).
LOCK_TRIES = 5
LOCK_PAUSE_SECONDS = 0.002


class AgentLock:
    """The exclusive, non-blocking lock that makes one agent per spool; released by the kernel on death.

    Two parts, so that one spool file has one deliverer however it is named and whatever is
    deleted: a flock on the lock file next to the spool's *real* path (the fast path, freed by the
    kernel when its holder dies), then a claim written into the spool itself (`Spool.claim_agent`:
    the holder's pid, start time and boot id). A second deliverer that got a flock anyway (the lock
    file was deleted under a running agent, or replaced) finds the claim of a live agent and lets go.
    The lock file is opened without following symlinks and must be ours.
    """

    def __init__(
        self, spool_path: Path, spool: Spool | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.spool_path = Path(spool_path)
        self._sleep = sleep
        # The claim is written through the holder's own connection when it has one: a short-lived
        # second connection to the spool in the agent's process left shells reading a stale WAL.
        self._spool = spool
        self.path = lock_path(self.spool_path)
        self._fd: int | None = None
        self._owner: str | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another agent holds it.

        Raises OSError when the lock cannot be taken at all (a foreign or unusable file).
        """
        if self._fd is not None:
            return True
        from oneiric_session.common.privacy import PrivatePathError, foreign_reason, open_private, private_dir

        refused = foreign_reason(self.spool_path)
        if refused is not None:
            raise PrivatePathError(f"{self.spool_path} refused: {refused}")
        private_dir(self.path.parent)
        for _ in range(3):
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
            if not self._flock(fd):
                os.close(fd)
                return False
            try:
                here = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                here = None
            held = os.fstat(fd)
            if here is not None and (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # deleted or replaced between our open and our flock: lock the one in place
        else:
            return False
        try:
            claimed = self._claim()
        except BaseException:
            os.close(fd)
            raise
        if not claimed:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _flock(self, fd: int) -> bool:
        """The flock, without waiting for an agent that holds it. A look at the lock (a shell's or
        `status`'s `agent_holds_lock`) holds it shared for a moment: tried again a few times so such
        a look never turns an agent away (nobody would start another for its events)."""
        for tries_left in reversed(range(LOCK_TRIES)):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if tries_left:
                    self._sleep(LOCK_PAUSE_SECONDS)
            except OSError:
                return False
        return False

    def _claim(self) -> bool:
        from oneiric_session.errors import SpoolError
        from oneiric_session.spool import Spool
        from oneiric_session.tracking import procinfo

        me = procinfo.identify()
        owner = json.dumps({"pid": me.pid, "start_time": me.start_time, "boot_id": me.boot_id})

        def alive(text: str) -> bool:
            try:
                other = json.loads(text)
                pid = int(other["pid"])
            except (ValueError, TypeError, KeyError):
                return False
            if pid == me.pid:
                return False  # our own stale claim (an earlier lock of this process)
            return procinfo.is_alive(pid, other.get("start_time"), other.get("boot_id"))

        spool = self._spool or Spool(self.spool_path, durable=False, checkpoint_on_close=False)
        try:
            claimed = spool.claim_agent(owner, alive)
        except SpoolError as exc:
            raise OSError(str(exc)) from exc
        finally:
            if spool is not self._spool:
                spool.close()
        if claimed:
            self._owner = owner
        return claimed

    def release(self) -> None:
        if self._fd is None:
            return
        if self._owner is not None:
            from oneiric_session.errors import SpoolError
            from oneiric_session.spool import Spool

            spool = self._spool or Spool(self.spool_path, durable=False, checkpoint_on_close=False)
            with contextlib.suppress(SpoolError):
                spool.release_agent(self._owner)
            if spool is not self._spool:
                spool.close()
            self._owner = None
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the descriptor drops the flock


def agent_holds_lock(spool_path: Path) -> bool:
    """True when some process holds the agent lock of this spool (an agent is running)."""
    path = lock_path(spool_path)
    try:
        # O_NONBLOCK: a FIFO put where the lock file goes would block the open for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # no agent locks that: it would refuse the spool
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
