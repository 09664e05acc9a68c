"""A central server that lists badly (tests only, never shipped): `python listing_server.py HOST:PORT`.

LISTING_MODE:
  repeat_cursor  every page is full and names the same next cursor: a listing that never ends
  odd_row        one page of one session, its fields overridden by the JSON in LISTING_ROW
  echo_token     one page of one session whose id and host repeat the token the call sent
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from oneiric_session import mcp_compat

ROW = {
    "session_id": "s-1",
    "component_name": "c",
    "shell_type": "S",
    "user": "u",
    "hostname": "h",
    "pid": 1,
    "started_at": "2026-02-06T12:00:00Z",
    "ended_at": None,
    "status": "open",
    "exit_reason": None,
    "duration_seconds": None,
}


def main(bind: str) -> None:
    mode = os.environ.get("LISTING_MODE", "")
    server = mcp_compat.new_server("listing", version="0", instructions="", log_level="WARNING", tools=[])

    @server.tool()
    async def list_sessions(
        open_only: bool = False,
        component: str | None = None,
        user: str | None = None,
        host: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        token: str | None = None,
    ) -> Any:
        if mode == "repeat_cursor":
            payload = {
                "sessions": [ROW] * (limit or 1),
                "next_cursor": "again",
                "status": "ok",
                "error": None,
            }
        elif mode == "echo_token":
            row = {**ROW, "session_id": str(token), "hostname": f"host-of-{token}"}
            payload = {"sessions": [row], "next_cursor": None, "status": "ok", "error": None}
        else:
            row = {**ROW, **json.loads(os.environ.get("LISTING_ROW", "{}"))}
            payload = {"sessions": [row], "next_cursor": None, "status": "ok", "error": None}
        return mcp_compat.tool_result(json.dumps(payload), structured=payload)

    host, _, port = bind.rpartition(":")
    mcp_compat.run_streamable_http(server, host=host, port=int(port))


if __name__ == "__main__":
    main(sys.argv[1])
