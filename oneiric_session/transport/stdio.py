"""Launch a stdio MCP server and speak newline-delimited JSON-RPC with it (an mcp `Transport`).

Why not the SDK's `stdio_client`: it logs every non-JSON stdout line as an
error with a traceback (the real Session-Buddy prints ~16 before JSON-RPC),
keeps an unbounded line buffer, hides the process (so a hung server always
costs the full stdin-close grace before it is killed), and offers no way to
tie the server's life to ours. This one skips noise quietly, caps a line,
keeps the last stderr lines for error messages, kills at once on `abort()`,
and launches through `_reaper.py` so the server dies with us even on SIGKILL.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from oneiric_session.common.safetext import sanitize_text
from oneiric_session.mcp_compat import SessionMessage, dump_message, parse_message

__all__ = ["ServerProcess", "child_environment"]

logger = logging.getLogger(__name__)

REAPER = str(Path(__file__).with_name("_reaper.py"))
# Time a server gets to exit on its own after its stdin closes (the MCP shutdown sequence).
CLOSE_GRACE_SECONDS = 2.0
# Time between SIGTERM and SIGKILL for a server that ignored its stdin closing.
TERM_GRACE_SECONDS = 2.0
# Time for the event loop to see a SIGKILLed process exit; only an unkillable one runs it out.
REAP_SECONDS = 2.0
_EXIT_POLL_SECONDS = 0.01
# One JSON-RPC message per line; answers here are small, so a longer line means a broken server.
MAX_LINE_BYTES = 4 * 1024 * 1024
_READ_CHUNK_BYTES = 65536
_TAIL_LINES = 20
_TAIL_LINE_CHARS = 300

# What a server inherits from us besides `server.env`: enough to run (PATH, HOME, locale, XDG
# paths that the bundled server's database and uv rely on), nothing secret (no tokens).
_INHERITED = (
    *("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TZ", "TMPDIR"),
    "ONEIRIC_SESSION_DB",
)
_INHERITED_PREFIXES = ("LC_", "XDG_", "UV_")


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of our environment, with the destination's own variables over it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if (key in _INHERITED or key.startswith(_INHERITED_PREFIXES)) and not value.startswith("()")
    }
    env.update(extra)
    return env


class ServerProcess:
    """One launch of a server: the process, its stderr tail, and the means to stop it."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: str | None) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.pid: int | None = None
        self.noise_lines = 0
        self.failure: str | None = None
        self._process: anyio.abc.Process | None = None
        self._aborted = False
        self._stdout_ended = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def exited(self) -> bool:
        """True once the server is seen gone: its exit status is known or its stdout has ended."""
        return self.returncode is not None or self._stdout_ended

    def stderr_tail(self, lines: int = 3) -> str:
        """The server's last stderr lines, one safe line (for error messages)."""
        return " | ".join(list(self._stderr)[-lines:])

    def abort(self) -> None:
        """Kill the whole process group now: the server is hung or broken, no grace is owed."""
        self._aborted = True
        if self.pid is not None and self.returncode is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    @asynccontextmanager
    async def transport(self) -> AsyncIterator[tuple[Any, Any]]:
        """Start the server and yield the (read, write) message streams; stop it on exit."""
        process = await anyio.open_process(
            [sys.executable, "-I", "-S", REAPER, "--", *self.argv],
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own group: one killpg reaches the server and its children
        )
        self._process = process
        self.pid = process.pid
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

        async def read_stdout() -> None:
            assert process.stdout is not None
            try:
                await pump_stdout()
            finally:
                self._stdout_ended = True

        async def pump_stdout() -> None:
            assert process.stdout is not None
            async with read_writer:
                try:
                    async for line in _lines(process.stdout, limit=MAX_LINE_BYTES):
                        message = self._parse(line)
                        if message is not None:
                            try:
                                await read_writer.send(message)
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return
                except _LineTooLong:
                    self.failure = f"the server wrote a line longer than {MAX_LINE_BYTES} bytes"
                    self.abort()

        async def write_stdin() -> None:
            assert process.stdin is not None
            try:
                async with write_reader:
                    async for item in write_reader:
                        data = dump_message(item) + "\n"
                        await process.stdin.send(data.encode("utf-8"))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                # The server is gone: end the read side so waiting requests fail instead of hanging.
                await read_writer.aclose()

        async def read_stderr() -> None:
            assert process.stderr is not None
            async for line in _lines(process.stderr, limit=_READ_CHUNK_BYTES, trim=True):
                text = sanitize_text(line.decode("utf-8", "replace"), _TAIL_LINE_CHARS).strip()
                if text:
                    self._stderr.append(text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stdout)
            tg.start_soon(write_stdin)
            tg.start_soon(read_stderr)
            try:
                yield read_stream, write_stream
            finally:
                # Shielded and bounded: a cancelled caller must still not leak the server.
                with anyio.CancelScope(shield=True):
                    await self._stop(process)
                    for stream in (read_stream, write_stream, read_writer, write_reader):
                        await stream.aclose()
                tg.cancel_scope.cancel()

    def _parse(self, line: bytes) -> SessionMessage | None:
        """A JSON-RPC message, or None for noise (log lines, garbage), which is counted and skipped."""
        line = line.strip()
        if not line:
            return None
        try:
            return parse_message(line)
        except ValueError:
            self.noise_lines += 1
            if self.noise_lines <= _TAIL_LINES:
                logger.debug("skipped non-JSON-RPC line from the server: %s", sanitize_text(repr(line), 200))
            return None

    async def _wait_exit(self, process: anyio.abc.Process, seconds: float) -> bool:
        # Polls returncode: process.wait() also waits for pipe EOF, which a stray child can hold.
        with anyio.move_on_after(seconds):
            while process.returncode is None:
                await anyio.sleep(_EXIT_POLL_SECONDS)
        return process.returncode is not None

    async def _stop(self, process: anyio.abc.Process) -> None:
        """Close stdin, give the grace (unless aborted), SIGTERM, then SIGKILL the group; reap it."""
        if process.stdin is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await process.stdin.aclose()
        if not self._aborted and not await self._wait_exit(process, CLOSE_GRACE_SECONDS):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            await self._wait_exit(process, TERM_GRACE_SECONDS)
        # Always end the group: it also takes any child the server left behind.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if not await self._wait_exit(process, REAP_SECONDS):
            logger.warning("server process %d survived SIGKILL; abandoning it", process.pid)
        with anyio.move_on_after(REAP_SECONDS):
            await process.aclose()


class _LineTooLong(Exception):
    """The line being read went past its limit."""


async def _lines(stream: Any, *, limit: int, trim: bool = False) -> AsyncIterator[bytes]:
    """The lines of `stream` (without their newline) until it ends or fails. A line longer than
    `limit` raises `_LineTooLong`, or with `trim` keeps only its last `limit` bytes."""
    buffer = b""
    while True:
        try:
            chunk = await stream.receive(_READ_CHUNK_BYTES)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return
        *lines, buffer = (buffer + chunk).split(b"\n")
        if len(buffer) > limit:
            if not trim:
                raise _LineTooLong
            buffer = buffer[-limit:]
        for line in lines:
            yield line
