"""A misbehaving MCP server for tests (never shipped): `python fault_server.py`, behaviour from env vars.

FAULT_MODE: comma-separated faults, any of
  refuse_start      exit 1 at once, with a message on stderr
  log_lines         print FAULT_LOG_LINES (default 16) log lines on stdout before JSON-RPC
  garbage           write a garbage line on stdout before every answer
  hang_initialize   never answer `initialize`
  hang_call         never answer a tool call
  slow              answer each tool call after FAULT_DELAY seconds
  exit_after        answer FAULT_EXIT_AFTER (default 1) tool calls, then exit (status 3) on the next
  drop_mid_answer   write half an answer line, then exit
  reject_discover   answer `server/discover` with "method not found"
  status_error      answer {"status": "error", "error": "Path does not exist: ..."}
  validation_error  answer isError "1 validation error for call[...]"
  auth_emoji        answer isError "❌ Authentication failed: ..."
  auth_plain        answer the plain (non-error) string "Authentication failed: ..."
  auth_wrapped      answer 0.23.0's wrapped form, "... structured_content must be a dict or None.
                    Got str: '❌ Authentication failed: ...'"
  json_text         answer only as JSON text (no structuredContent)
  bare_id           answer a start with the bare session id as text
  not_found         answer an end with status "not_found"
  echo_token        on a tool call, print the call's token on stderr and exit (status 5)
  linger            ignore SIGTERM and keep running after stdin closes (only SIGKILL ends it)
FAULT_REFUSE_FILE: while this file exists, behave as `refuse_start` (lets a test heal a server).
FAULT_RECORD: a file that gets one JSON line per received request (tool calls recorded by the tools)
  ({"pid", "method", "tool", "arguments"}), plus {"pid", "started": true} at start-up.
`--http HOST:PORT` serves Streamable HTTP at /mcp instead of stdio.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

MODES = frozenset(filter(None, os.environ.get("FAULT_MODE", "").split(",")))
RECORD = os.environ.get("FAULT_RECORD")


def record(entry: dict[str, Any]) -> None:
    if RECORD:
        with open(RECORD, "a", encoding="utf-8") as file:
            file.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")


def refuse_to_start() -> bool:
    refuse_file = os.environ.get("FAULT_REFUSE_FILE")
    return "refuse_start" in MODES or bool(refuse_file and os.path.exists(refuse_file))


# Decided before mcp is imported, so a refusal is as fast as a real crash at start-up.
if __name__ == "__main__":
    record({"started": True})
    if refuse_to_start():
        print("fault server: refusing to start", file=sys.stderr)
        sys.exit(1)

import anyio  # noqa: E402
from mcp.server.stdio import stdio_server  # noqa: E402

from oneiric_session import mcp_compat  # noqa: E402
from oneiric_session.mcp_compat import SessionMessage, tool_result, types  # noqa: E402

DELAY_SECONDS = float(os.environ.get("FAULT_DELAY", "1"))
EXIT_AFTER = int(os.environ.get("FAULT_EXIT_AFTER", "1"))
AUTH_MESSAGE = "Authentication failed: invalid or expired token"

_calls = 0
# The wire: stdio_server() points fd 1 at stderr while it serves, so keep our own copy of stdout.
_WIRE_FD = os.dup(1)


def record_call(tool: str, arguments: dict[str, Any]) -> None:
    """Tools record their own calls (so HTTP is recorded too); arguments left unset are omitted."""
    record(
        {
            "method": "tools/call",
            "tool": tool,
            "arguments": {k: v for k, v in arguments.items() if v is not None},
        }
    )


def raw_stdout(text: str) -> None:
    """Write straight to the wire (stdout), around the server's own framing."""
    os.write(_WIRE_FD, text.encode("utf-8"))


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return tool_result(text, is_error=is_error)


async def answer(tool: str, payload: dict[str, Any]) -> types.CallToolResult:
    """Apply the call-time faults, then answer `payload` in the shape the modes ask for."""
    global _calls
    _calls += 1
    if "exit_after" in MODES and _calls > EXIT_AFTER:
        os._exit(3)
    if "hang_call" in MODES:
        await anyio.sleep_forever()
    if "slow" in MODES:
        await anyio.sleep(DELAY_SECONDS)
    if "drop_mid_answer" in MODES:
        raw_stdout('{"jsonrpc": "2.0", "id": ')
        os._exit(4)
    if "garbage" in MODES:
        raw_stdout("\x1b[31m%%% not json at all %%%\x1b[0m\n")
    if "validation_error" in MODES:
        return text_result(
            f"1 validation error for call[{tool}]\ncomponent_name\n  Field required [type=missing]",
            is_error=True,
        )
    if "auth_emoji" in MODES:
        return text_result(f"❌ {AUTH_MESSAGE}", is_error=True)
    if "auth_plain" in MODES:
        return text_result(AUTH_MESSAGE)
    if "auth_wrapped" in MODES:
        return text_result(
            f"Error calling tool '{tool}': structured_content must be a dict or None. "
            f"Got str: '❌ {AUTH_MESSAGE}'",
            is_error=True,
        )
    if "status_error" in MODES:
        payload = {"session_id": None, "status": "error", "error": "Path does not exist: /nowhere"}
    if "bare_id" in MODES and tool == "track_session_start":
        return text_result(str(payload["session_id"]))
    text = json.dumps(payload)
    if "json_text" in MODES:
        return tool_result(text)
    return tool_result(text, structured=payload)


def build_server() -> Any:
    server = mcp_compat.new_server(
        "fault-server", version="0", instructions="fault injection", log_level="WARNING", tools=[]
    )

    @server.tool()
    async def track_session_start(
        event_type: str,
        event_version: str | None = None,
        event_id: str | None = None,
        component_name: str | None = None,
        shell_type: str | None = None,
        timestamp: str | None = None,
        pid: int | None = None,
        user: dict[str, str] | None = None,
        hostname: str | None = None,
        environment: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> types.CallToolResult:
        record_call("track_session_start", locals())
        if "echo_token" in MODES:
            print(f"auth check token={token}", file=sys.stderr, flush=True)
            os._exit(5)
        digits = "".join(ch for ch in (timestamp or "")[:19] if ch.isdigit())
        session_id = f"{component_name}-{digits[:8]}-{digits[8:14]}"
        return await answer(
            "track_session_start", {"session_id": session_id, "status": "tracked", "error": None}
        )

    @server.tool()
    async def track_session_end(
        session_id: str,
        timestamp: str | None = None,
        event_type: str = "session_end",
        metadata: dict[str, Any] | None = None,
        token: str | None = None,
    ) -> types.CallToolResult:
        record_call("track_session_end", locals())
        status = "not_found" if "not_found" in MODES else "ended"
        return await answer("track_session_end", {"session_id": session_id, "status": status, "error": None})

    return server


async def serve_stdio(server: Any) -> None:
    """Serve over stdio, with a pump in front of the server that records and applies request faults."""
    lowlevel = mcp_compat.lowlevel_server(server)
    async with stdio_server() as (read_stream, write_stream):
        inner_send, inner_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def pump() -> None:
            async with inner_send:
                async for item in read_stream:
                    message = mcp_compat.raw_message(item)
                    if isinstance(message, types.JSONRPCRequest):
                        if message.method != "tools/call":  # the tools record their own calls
                            record({"method": message.method})
                        if message.method == "initialize" and "hang_initialize" in MODES:
                            await anyio.sleep_forever()
                        if message.method == "server/discover" and "reject_discover" in MODES:
                            await write_stream.send(
                                mcp_compat.jsonrpc_error(
                                    message.id, types.METHOD_NOT_FOUND, "Method not found"
                                )
                            )
                            continue
                    await inner_send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            await lowlevel.run(inner_receive, write_stream, lowlevel.create_initialization_options())
            if "linger" in MODES:
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if "linger" in MODES:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "log_lines" in MODES:
        for number in range(int(os.environ.get("FAULT_LOG_LINES", "16"))):
            print(f"2026-01-01 00:00:00 INFO  session_buddy: starting component {number}", flush=True)
    server = build_server()
    if argv[:1] == ["--http"]:
        host, _, port = argv[1].rpartition(":")
        mcp_compat.run_streamable_http(server, host=host, port=int(port))
        return 0
    anyio.run(serve_stdio, server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
