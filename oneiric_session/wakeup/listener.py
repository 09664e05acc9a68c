"""The agent's end of the wake-up socket (standard library only).

Run only by the agent's process, and bound only while it holds the lock (`lock.AgentLock`).
A shell imports this module with the package but never opens a listener: `socket` and
`struct` are imported when one is opened or read, not at import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from oneiric_session.wakeup.message import MAX_DATAGRAM_BYTES, Wakeup, decode_wakeup
from oneiric_session.wakeup.paths import socket_note, socket_note_path, socket_path

if TYPE_CHECKING:
    import socket

__all__ = ["WakeupListener"]


class WakeupListener:
    """The agent's end: a bound, non-blocking datagram socket (bind only while holding the lock)."""

    def __init__(self, spool_path: Path) -> None:
        self.path = socket_path(spool_path)
        self._spool_path = spool_path
        self._note = socket_note_path(spool_path)
        self._sock: socket.socket | None = None
        self._creds = False
        self.refused = 0  # datagrams dropped because another user sent them

    def open(self) -> bool:
        """Bind the socket (replacing a stale file); False when no private directory is usable."""
        if self.path is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        import socket  # the agent's side: not the shell's

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # The sender's credentials on every datagram (Linux), set before the first can arrive:
        # what another user sent is dropped even if the private directory were opened up.
        # Elsewhere the 0700 directory (checked to be ours) is the guard.
        self._creds = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")
        if self._creds:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            except OSError:
                self._creds = False
        try:
            sock.bind(os.fsencode(self.path))
            os.chmod(self.path, 0o600)
        except OSError:
            sock.close()
            return False
        sock.setblocking(False)
        self._sock = sock
        # Where it listens, for shells that compute another socket path (`paths.published_socket`).
        with contextlib.suppress(OSError, ValueError):  # (ValueError: a path that is not UTF-8)
            from oneiric_session.common.privacy import write_private

            write_private(self._note, socket_note(self.path, self._spool_path))
        return True

    def _receive(self) -> tuple[bytes, bool] | None:
        """One datagram and whether our own user sent it; None when there is none."""
        import socket
        import struct

        assert self._sock is not None
        try:
            if not self._creds:
                return self._sock.recv(MAX_DATAGRAM_BYTES), True
            data, ancillary, _flags, _addr = self._sock.recvmsg(
                MAX_DATAGRAM_BYTES, socket.CMSG_SPACE(struct.calcsize("3i"))
            )
        except OSError:  # BlockingIOError: nothing more to read
            return None
        uid = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = struct.unpack("3i", value[: struct.calcsize("3i")])
        if uid != os.getuid():
            self.refused += 1
            if self.refused == 1:
                import logging

                logging.getLogger("oneiric_session.agent").warning(
                    "ignored a wake-up from uid %s on %s: only uid %d may wake this agent",
                    uid,
                    self.path,
                    os.getuid(),
                )
            return data, False
        return data, True

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("listener is not open")
        return self._sock.fileno()

    def drain(self) -> Wakeup:
        """Read every waiting wake-up, merged: how many, the newest token per key, any handover."""
        count, handover = 0, False
        tokens: dict[str, str] = {}
        secrets: dict[str, Mapping[str, str]] = {}
        while self._sock is not None:
            received = self._receive()
            if received is None:
                break
            data, ours = received
            if not ours:
                continue  # another user's: not a wake-up, no token, no handover
            one = decode_wakeup(data)
            count += 1
            tokens.update(one.tokens)
            secrets.update(one.secrets)
            handover = handover or one.handover
        return Wakeup(datagrams=count, tokens=tokens, handover=handover, secrets=secrets)

    def close(self) -> None:
        """Unbind: from now on a shell sees nobody listening and spawns an agent. Idempotent."""
        if self._sock is None:
            return
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            with contextlib.suppress(OSError, ValueError):
                if self._note.read_text(encoding="utf-8").partition("\n")[0] == os.fsdecode(self.path):
                    self._note.unlink()  # (unless a newer agent's note replaced ours)
        self._sock.close()
        self._sock = None
