"""Assembles the bundled Session-Buddy-compatible MCP server on the SDK's `MCPServer` (1.x: `FastMCP`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneiric_session import __version__
from oneiric_session import mcp_compat as mcp
from oneiric_session.server.auth import TokenVerifier
from oneiric_session.server.store import SessionStore
from oneiric_session.server.tools import SessionTools

if TYPE_CHECKING:
    from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase  # type: ignore[import-not-found, unused-ignore]  # 2.x only

SERVER_NAME = "oneiric-session"
INSTRUCTIONS = (
    "Session-Buddy-compatible session tracking: call track_session_start when an admin shell "
    "starts and track_session_end with the returned session_id when it exits."
)


def strict_tool(fn: Callable[..., Any]) -> Any:
    """A tool whose unknown arguments are refused, as the real server's are (`additionalProperties: false`).

    The argument model is renamed `call[<tool>]` so a refusal reads like the real server's
    ("1 validation error for call[track_session_start]").
    """
    tool = mcp.tool_from_function(fn)
    loose = tool.fn_metadata.arg_model
    strict: type[ArgModelBase] = type(
        f"call[{tool.name}]",
        (loose,),
        {"__module__": loose.__module__, "model_config": {**loose.model_config, "extra": "forbid"}},
    )
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)
    return tool


def read_only(tool: Any) -> Any:
    """Marked read-only for clients that show tool annotations (it writes nothing)."""
    # By the wire names: the same spelling is accepted by every SDK version's model.
    tool.annotations = mcp.types.ToolAnnotations.model_validate(
        {"readOnlyHint": True, "idempotentHint": True}
    )
    return tool


def build_server(store: SessionStore, *, verifier: TokenVerifier | None = None) -> Any:
    tools = SessionTools(store, verifier)
    return mcp.new_server(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        tools=[
            *(
                strict_tool(fn)
                for fn in (tools.track_session_start, tools.track_session_end, tools.health_check)
            ),
            read_only(strict_tool(tools.list_sessions)),
        ],
    )


def create_server(db_path: Path, *, secret: str | None = None) -> Any:
    """The server over the store at `db_path`; with a secret, every tracking call needs a valid token."""
    return build_server(SessionStore(db_path), verifier=TokenVerifier(secret) if secret else None)
