"""The bundled server on stdio, its pipes read and written by the event loop, not by threads.

The SDK's `stdio_server` reads stdin through `anyio.wrap_file`: one hop to a worker thread for
every line read and another for every answer written. Measured with a window of calls in
flight, those hops were about a fifth of the server's CPU per call (py-spy, `benchmarks/run.py`
backlog). Here the same two file descriptors become non-blocking pipes of the event loop; the
SDK's own server loop (`Server.run`) is unchanged, fed the same `SessionMessage`s it would get.
As the SDK does, fd 0 and fd 1 are pointed away while serving (fd 0 at /dev/null, fd 1 at
stderr) so nothing a tool or a child process prints can reach the wire, and put back after.

Standard input that is not a pipe, socket or terminal (a regular file) cannot be watched by an
event loop: then the SDK's own transport serves, as before.
"""

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import anyio

from oneiric_session import mcp_compat
from oneiric_session.mcp_compat import SessionMessage, dump_message, parse_message

__all__ = ["serve_stdio"]

# One request is an event's arguments: far below this. A longer line is answered as invalid.
MAX_LINE_BYTES = 4 * 1024 * 1024


def serve_stdio(server: Any) -> None:
    """Serve `server` (an `MCPServer`, or 1.x `FastMCP`) on this process's stdin and stdout until EOF."""
    if not _pollable(0) or not _pollable(1):
        server.run("stdio")
        return
    with _wire() as (wire_in, wire_out):
        anyio.run(_serve, mcp_compat.lowlevel_server(server), wire_in, wire_out)


def _pollable(fd: int) -> bool:
    """Whether an event loop can watch `fd`: a pipe, a socket or a terminal (not a regular file, nor
    a device such as /dev/null, which epoll refuses)."""
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


@contextlib.contextmanager
def _wire() -> Iterator[tuple[int, int]]:
    """The wire's two descriptors, copied; fd 0 reads /dev/null and fd 1 writes to stderr meanwhile."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    # The event loop makes the pipes non-blocking, and that flag belongs to the open file itself,
    # which fd 0 and fd 1 (and whoever started us) share: it is put back as it was.
    blocking = os.get_blocking(saved_in), os.get_blocking(saved_out)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
        os.dup2(2, 1)
        yield wire_in, wire_out
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        for fd, was in zip((0, 1), blocking, strict=True):
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was)
        for fd in (null, saved_in, saved_out):
            os.close(fd)


async def _serve(lowlevel: Any, wire_in: int, wire_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    # Each pipe transport owns its file object and closes it with itself.
    wire_reader = open(wire_in, "rb", buffering=0)  # noqa: SIM115
    wire_writer = open(wire_out, "wb", buffering=0)  # noqa: SIM115
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), wire_reader
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, wire_writer
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    to_server, from_wire = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_wire, from_server = anyio.create_memory_object_stream[SessionMessage](0)

    async def read_wire() -> None:
        async with to_server:
            while (line := await _next_line(reader)) != b"":
                message: SessionMessage | Exception
                if line is None:
                    message = ValueError(f"a line longer than {MAX_LINE_BYTES} bytes")
                elif not line.strip():
                    continue
                else:
                    try:
                        message = parse_message(line)
                    except ValueError as exc:  # handed on, as the SDK's own transport does
                        message = exc
                await to_server.send(message)

    async def write_wire() -> None:
        async with from_server:
            async for item in from_server:
                writer.write(dump_message(item).encode("utf-8") + b"\n")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_wire)
            tasks.start_soon(write_wire)
            await lowlevel.run(from_wire, to_wire, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()
    finally:
        read_transport.close()
        write_transport.close()


async def _next_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line (b"" at the end of input); None for a line over the limit, read past."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as eof:
        return eof.partial  # the last line without its newline, or b""
    except asyncio.LimitOverrunError as over:
        consumed = over.consumed
    while True:  # drop the overlong line: what is buffered, then up to its newline
        await reader.readexactly(consumed)
        try:
            await reader.readuntil(b"\n")
            return None
        except asyncio.LimitOverrunError as more:
            consumed = more.consumed
        except asyncio.IncompleteReadError:
            return None
