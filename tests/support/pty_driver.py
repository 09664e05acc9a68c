"""A tiny pexpect-like driver: run a program in a real pseudo-terminal (test support).

The child gets the pty as its controlling terminal (`pty.fork` runs setsid and
TIOCSCTTY), so closing the master side is a real hang-up: the kernel sends SIGHUP.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence

from tests.support.signals import as_from_a_terminal

# Escape sequences a terminal would interpret; stripped so tests match plain text.
_ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


def clean(raw: bytes) -> str:
    return _ANSI.sub(b"", raw).replace(b"\r", b"").decode(errors="replace")


class PtyProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | os.PathLike[str] | None = None,
        rows: int = 24,
        cols: int = 100,
    ) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, report nothing through pytest's machinery
            try:
                as_from_a_terminal()
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.raw = b""  # everything read so far
        self._seen = 0  # how much of clean(raw) earlier expectations consumed
        self.eof = False
        self.status: int | None = None

    @property
    def text(self) -> str:
        return clean(self.raw)

    def _read_some(self, timeout: float) -> bool:
        """Read what is available within `timeout`; False on EOF (the terminal closed on the child's side)."""
        if self.eof:
            return False
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as exc:  # Linux answers EIO once no process holds the slave side
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.raw += chunk
        return True

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait for `pattern` (a regex) in the output after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            match = regex.search(text, self._seen)
            if match:
                self._seen = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_some(remaining):
                what = "timed out" if remaining <= 0 else "the terminal closed"
                raise AssertionError(f"{what} waiting for {pattern!r}; output so far:\n{text[-3000:]}")

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def sendline(self, line: str) -> None:
        self.send(line + "\r")

    def send_eof(self) -> None:
        self.send("\x04")

    def kill(self, signum: int = signal.SIGTERM) -> None:
        os.kill(self.pid, signum)

    def hang_up(self) -> None:
        """Close the terminal, as closing a terminal window does."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.eof = True

    def wait(self, timeout: float = 15.0) -> int:
        """Read to the end and reap the child; its exit code (-N when killed by signal N)."""
        deadline = time.monotonic() + timeout
        while self._read_some(deadline - time.monotonic()) and time.monotonic() < deadline:
            pass
        pidfd = os.pidfd_open(self.pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)
        if not ready:
            self.kill(signal.SIGKILL)
            os.waitpid(self.pid, 0)
            raise AssertionError(f"the child did not exit in {timeout} s; output:\n{self.text[-3000:]}")
        _, status = os.waitpid(self.pid, 0)
        self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def close(self) -> None:
        """Make sure nothing is left behind, whatever the test did."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
