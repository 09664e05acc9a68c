"""The bundled Session-Buddy-compatible MCP server and its SQLite store.

`create_server` is loaded on first use: the store (`oneiric_session.server.store`) stays
importable without `mcp`, for `oneiric-session sessions`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_server"]


def __getattr__(name: str) -> Any:
    if name == "create_server":
        from oneiric_session.server.app import create_server

        return create_server
    raise AttributeError(f"module 'oneiric_session.server' has no attribute {name!r}")
