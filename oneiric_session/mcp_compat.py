"""The one module that knows which major version of the MCP SDK is installed: 1.x (>= 1.30) or 2.x.

Oneiric 0.17.0's tree pins `mcp<2` (through fastmcp 3.x) while current releases bring
mcp 2.x, so the agent, `check`, the transport and the bundled server run on either. What
differs, and is bridged here and nowhere else:

- types: 2.x `mcp_types` (snake_case fields: `is_error`, `structured_content`), 1.x
  `mcp.types` (camelCase: `isError`, `structuredContent`); results are read through
  `answer_view()` and built with `tool_result()`;
- errors: 2.x `MCPError(code, message)`, 1.x `McpError(ErrorData)`; both carry `.error`;
- the client: 2.x `mcp.Client(transport, mode="legacy")`, 1.x `ClientSession(read, write)`
  plus `initialize()`; HTTP: 2.x `streamable_http_client` on httpx2 yields two streams,
  1.x on httpx yields three (the third, the session id getter, is dropped);
- the server: 2.x `MCPServer`, 1.x `FastMCP`; a storage failure must reach the client as
  a JSON-RPC error, which 1.x only lets through for `McpError`s its tool layer re-raises.

Imported only by the agent, `check`, `serve` and the bundled server: never by the shell side.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from mcp.shared.message import SessionMessage

__all__ = [
    "MCP_MAJOR",
    "MCP_VERSION",
    "HTTPError",
    "HTTPTimeout",
    "MCPError",
    "SessionMessage",
    "answer_view",
    "dump_message",
    "error_code",
    "error_message",
    "http_transport",
    "httpx",
    "in_memory_client",
    "jsonrpc_error",
    "lowlevel_server",
    "new_server",
    "open_client",
    "parse_message",
    "raw_message",
    "run_streamable_http",
    "serve_http_app",
    "server_error",
    "stdio_transport",
    "tool_from_function",
    "tool_input_schema",
    "tool_result",
    "types",
]

MCP_VERSION = importlib.metadata.version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".", 1)[0])
# The oldest releases of each major that the test suite runs against (scripts/test).
TESTED_LOWEST = {1: "1.30.0", 2: "2.3.0"}

# mypy sees one installed major: 1.x's modules and names are reached through importlib (untyped
# handles), and 2.x's imports carry `ignore[..., unused-ignore]` for a check against the 1.x tree.
if MCP_MAJOR >= 2:
    import httpx2 as _httpx  # type: ignore[import-not-found, unused-ignore]  # 2.x only
    import mcp_types as types  # type: ignore[import-not-found, unused-ignore]  # 2.x only
else:
    _httpx = importlib.import_module("httpx")
    types = importlib.import_module("mcp.types")
# `types` as an untyped handle, for the lines that run on 1.x only and use its camelCase API.
_types_1x: Any = types
_exceptions: Any = importlib.import_module("mcp.shared.exceptions")
MCPError: type[Exception] = _exceptions.MCPError if MCP_MAJOR >= 2 else _exceptions.McpError

# The httpx the installed SDK speaks HTTP with (2.x: httpx2, 1.x: httpx).
httpx = _httpx
HTTPError: type[Exception] = _httpx.HTTPError
HTTPTimeout: type[Exception] = _httpx.TimeoutException
# What a client SDK raises when the HTTP server no longer knows the session: 2.x uses
# INVALID_REQUEST, 1.x answers a 404 with the (positive) code 32600.
SESSION_LOST_CODES = frozenset({types.INVALID_REQUEST, -types.INVALID_REQUEST})


@dataclass(frozen=True)
class AnswerView:
    """A CallToolResult read the same way on both SDKs (the shape transport/answers.py reads)."""

    is_error: bool
    structured_content: dict[str, Any] | None
    content: list[Any]


def answer_view(result: Any) -> AnswerView:
    if MCP_MAJOR >= 2:
        return AnswerView(bool(result.is_error), result.structured_content, list(result.content or ()))
    return AnswerView(bool(result.isError), result.structuredContent, list(result.content or ()))


def tool_result(
    text: str, *, structured: dict[str, Any] | None = None, is_error: bool = False
) -> types.CallToolResult:
    """A CallToolResult with one text block (and structured content, when given)."""
    content: list[Any] = [types.TextContent(type="text", text=text)]
    if MCP_MAJOR >= 2:
        return types.CallToolResult(content=content, structured_content=structured, is_error=is_error)
    result: types.CallToolResult = _types_1x.CallToolResult(
        content=content, structuredContent=structured, isError=is_error
    )
    return result


def tool_input_schema(tool: Any) -> dict[str, Any]:
    """A listed tool's input schema (`input_schema` on 2.x, `inputSchema` on 1.x)."""
    schema: dict[str, Any] = tool.input_schema if MCP_MAJOR >= 2 else tool.inputSchema
    return schema


def error_code(exc: BaseException) -> int:
    return int(exc.error.code)  # type: ignore[attr-defined]


def error_message(exc: BaseException) -> str:
    return str(exc.error.message)  # type: ignore[attr-defined]


def jsonrpc_error(request_id: Any, code: int, message: str) -> SessionMessage:
    """A JSON-RPC error answer to `request_id`, ready to write to a stream."""
    data = types.ErrorData(code=code, message=message)
    error = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=data)
    return SessionMessage(error if MCP_MAJOR >= 2 else _types_1x.JSONRPCMessage(error))


def raw_message(item: Any) -> Any:
    """The JSON-RPC model inside a SessionMessage (1.x wraps it in a RootModel)."""
    message = getattr(item, "message", None)
    return getattr(message, "root", message) if MCP_MAJOR < 2 else message


def parse_message(line: bytes) -> SessionMessage:
    """One JSON-RPC message from one line of JSON; ValueError (pydantic's) if it is not one."""
    if MCP_MAJOR >= 2:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    return SessionMessage(_types_1x.JSONRPCMessage.model_validate_json(line))


def dump_message(item: SessionMessage) -> str:
    return item.message.model_dump_json(by_alias=True, exclude_unset=True)


# -- the client --------------------------------------------------------------------------


class ClientHandle:
    """One initialized MCP session: a raw `tools/call`, plus the SDK's own calls for tests."""

    def __init__(self, session: Any, client: Any = None, *, server_info: Any = None) -> None:
        self._session = session
        self._client = client
        # What the server said of itself in the handshake (`.name`, `.version`), or None.
        self.server_info = server_info

    async def send_call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """`tools/call` as one request, no tool listing first and no output-schema check."""
        params = types.CallToolRequestParams(name=tool, arguments=arguments)
        request: Any = types.CallToolRequest(params=params)
        if MCP_MAJOR < 2:
            request = _types_1x.ClientRequest(request)
        return await self._session.send_request(request, types.CallToolResult)

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> Any:
        return await (self._client or self._session).call_tool(tool, arguments)

    async def list_tools(self) -> Any:
        return await (self._client or self._session).list_tools()


@asynccontextmanager
async def open_client(transport: Any, *, client_info: Any | None = None) -> AsyncIterator[ClientHandle]:
    """Enter `transport` (an async context manager yielding the streams) and initialize a session.

    2.x: mode="legacy", the initialize handshake every server speaks (the `server/discover`
    probe costs a round trip and some servers answer it by failing).
    """
    if MCP_MAJOR >= 2:
        from mcp import Client  # type: ignore[attr-defined, unused-ignore]  # 2.x only

        async with Client(transport, mode="legacy", cache=None, client_info=client_info) as client:
            yield ClientHandle(client.session, client, server_info=client.server_info)
        return
    from mcp import ClientSession

    async with transport as streams:
        read_stream, write_stream = streams[0], streams[1]
        async with ClientSession(read_stream, write_stream, client_info=client_info) as session:
            initialized: Any = await session.initialize()  # 1.x's InitializeResult (camelCase)
            yield ClientHandle(session, server_info=initialized.serverInfo)


@asynccontextmanager
async def http_transport(url: str, *, http_client: Any = None) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's Streamable HTTP client transport for `url` (over `http_client`), as (read, write)."""
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url, http_client=http_client) as streams:
        yield streams[0], streams[1]


@asynccontextmanager
async def in_memory_client(server: Any) -> AsyncIterator[ClientHandle]:
    """A session to `server` in this process, over memory streams (tests)."""
    if MCP_MAJOR >= 2:
        from mcp import Client  # type: ignore[attr-defined, unused-ignore]  # 2.x only

        async with Client(server) as client:
            yield ClientHandle(client.session, client)
        return
    memory: Any = importlib.import_module("mcp.shared.memory")  # 1.x only

    async with memory.create_connected_server_and_client_session(server._mcp_server) as session:
        yield ClientHandle(session)


def stdio_transport(command: str, args: list[str], *, env: dict[str, str], errlog: Any) -> Any:
    """The SDK's own stdio client transport (tests and benchmarks; the agent uses transport/stdio.py)."""
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    return stdio_client(StdioServerParameters(command=command, args=args, env=env), errlog=errlog)


# -- the server --------------------------------------------------------------------------


def server_error(code: int, message: str) -> Exception:
    """An exception a tool raises to answer a JSON-RPC error (not an isError result)."""
    if MCP_MAJOR >= 2:
        return MCPError(code, message)
    return _ToolLayerError(types.ErrorData(code=code, message=message))


if MCP_MAJOR < 2:
    from mcp.shared.exceptions import UrlElicitationRequiredError as _PassedThrough

    class _ToolLayerError(_PassedThrough):
        """1.x turns every exception from a tool into an isError result except this family,
        which its tool layer and its call handler re-raise and its request handler answers as
        the JSON-RPC error it carries."""

        def __init__(self, error: Any) -> None:
            self._elicitations = []
            MCPError.__init__(self, error)


def tool_from_function(fn: Callable[..., Any]) -> Any:
    """The SDK's Tool for `fn` (its `fn_metadata.arg_model` and `parameters` may be replaced)."""
    if MCP_MAJOR >= 2:
        from mcp.server.mcpserver.tools import Tool  # type: ignore[import-not-found, unused-ignore]  # 2.x only

        tool = Tool.from_function(fn)
    else:
        tool = importlib.import_module("mcp.server.fastmcp.tools").Tool.from_function(fn)  # 1.x only
    if MCP_MAJOR < 2 and tool.fn_metadata.output_model is not None:
        # 1.x validates a returned CallToolResult's structuredContent against the output
        # model, so a refusal (isError, no structured content) would fail as None; 2.x does
        # not. Keep the advertised schema, accept a missing structured answer.
        from pydantic import RootModel

        tool.fn_metadata.output_model = RootModel[dict[str, Any] | None]
    return tool


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def new_server(name: str, *, version: str, instructions: str, log_level: LogLevel, tools: list[Any]) -> Any:
    if MCP_MAJOR >= 2:
        from mcp.server.mcpserver import MCPServer  # type: ignore[import-not-found, unused-ignore]  # 2.x only

        server = MCPServer(name, version=version, instructions=instructions, log_level=log_level, tools=tools)
        # 2.x wraps every request in an OpenTelemetry span, a no-op until an exporter is installed;
        # the bundled server installs none, and the wrapping costs it CPU on every call.
        lowlevel_server(server).middleware = [
            m for m in lowlevel_server(server).middleware if type(m).__name__ != "OpenTelemetryMiddleware"
        ]
        return server
    fastmcp: Any = importlib.import_module("mcp.server.fastmcp")  # 1.x only
    server = fastmcp.FastMCP(name, instructions=instructions, log_level=log_level, tools=tools)
    server._mcp_server.version = version
    return server


def lowlevel_server(server: Any) -> Any:
    return server._lowlevel_server if MCP_MAJOR >= 2 else server._mcp_server


def _closed_stream_noise(record: logging.LogRecord) -> bool:
    """False for the traceback 1.x logs at ERROR each time a client closes its GET stream."""
    import anyio

    error = record.exc_info[1] if record.exc_info else None
    benign = isinstance(error, anyio.ClosedResourceError | anyio.BrokenResourceError)
    return not (benign and record.getMessage() == "Error in standalone SSE writer")


def run_streamable_http(server: Any, *, host: str, port: int) -> None:
    """Serve Streamable HTTP at http://host:port/mcp until stopped (the SDK's own runner)."""
    if MCP_MAJOR >= 2:
        server.run("streamable-http", host=host, port=port)
        return
    server.settings.host, server.settings.port = host, port
    server.run("streamable-http")


def serve_http_app(server: Any, *, path: str, host: str) -> Any:
    """The server's Streamable HTTP ASGI app at `path`, DNS-rebinding protection on for loopback hosts.

    Each answer is one JSON body (`json_response`), not a server-sent-events stream per POST: the
    bundled server's tools send nothing before their answer, and the stream's machinery was about
    a quarter of its CPU per call (py-spy, 32 hosts at once). Clients of either kind accept both.
    """
    if MCP_MAJOR >= 2:
        return server.streamable_http_app(streamable_http_path=path, host=host, json_response=True)
    from mcp.server.transport_security import TransportSecuritySettings

    logging.getLogger("mcp.server.streamable_http").addFilter(_closed_stream_noise)
    server.settings.streamable_http_path = path
    server.settings.json_response = True
    server.settings.host = host
    loopback = host in ("127.0.0.1", "localhost", "::1")
    server.settings.transport_security = (
        TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
        if loopback
        else None
    )
    return server.streamable_http_app()
