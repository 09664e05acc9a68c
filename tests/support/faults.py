"""Launch `fault_server.py` through the real transport, isolated under a test's tmp dir."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from oneiric_session.tracking.destination import Destination, Tuning

FAULT_SERVER = str(Path(__file__).with_name("fault_server.py"))


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """HOME and XDG directories under `tmp_path`, so nothing touches the real home."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def fault_server_env(modes: str) -> dict[str, str]:
    """`ONEIRIC_SESSION_SERVER__*` variables that make the configured server the fault server."""
    return {
        "ONEIRIC_SESSION_SERVER__COMMAND": sys.executable,
        "ONEIRIC_SESSION_SERVER__ARGS": json.dumps([FAULT_SERVER]),
        "ONEIRIC_SESSION_SERVER__ENV": json.dumps({"FAULT_MODE": modes}),
    }


def fault_destination(
    tmp_path: Path, modes: str = "", *, env: dict[str, str] | None = None, **tuning: Any
) -> Destination:
    """A stdio destination running the fault server with `modes`, recording requests to `record.jsonl`."""
    settings = {
        "attempts": 1,
        "wait_min_seconds": 0.0,
        "connect_seconds": 10.0,
        "call_seconds": 10.0,
        **tuning,
    }
    child_env = {
        **isolated_env(tmp_path),
        "FAULT_MODE": modes,
        "FAULT_RECORD": str(tmp_path / "record.jsonl"),
    }
    child_env.update(env or {})
    return Destination(
        command=sys.executable,
        args=(FAULT_SERVER,),
        env=tuple(sorted(child_env.items())),
        tuning=Tuning(**settings),
    )


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "record.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tool_calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [r for r in records(tmp_path) if r.get("method") == "tools/call"]


def server_pids(tmp_path: Path) -> list[int]:
    return [r["pid"] for r in records(tmp_path) if r.get("started")]


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout_seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)  # sleep-ok: polling another process's death
    return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


_ANSWERING_SERVER = """
import json, os, sys
sys.path.insert(0, os.path.dirname({fault_server!r}))
import fault_server as fs

{answer}

fs.answer = answer
sys.exit(fs.main(sys.argv[1:]))
"""


# An answer for `start_refused_by`: "tracked", the session id the `{session_id}` expression
# makes (`s`: the server's DB_PASSWORD).
ID_FROM_DB_PASSWORD = """
async def answer(tool, payload):
    s = os.environ['DB_PASSWORD']
    said = {{"status": "tracked", "session_id": {session_id}}}
    return fs.tool_result(json.dumps(said), structured=said)
"""


def start_refused_by(
    tmp_path: Path, answer: str, env: dict[str, str], *, component_name: str = "c"
) -> BaseException | None:
    """What a client's `start_session` of `component_name` raises against the fault server
    answering every call with `answer` (the source of `async def answer(tool, payload)`, `fs` the
    fault server's module), its process given `env` (secret server.env values too); None when it
    raised nothing."""
    import asyncio

    from oneiric_session.tracking import events
    from oneiric_session.tracking.limits import Limits
    from oneiric_session.transport.client import SessionBuddyClient

    script = tmp_path / "answering_server.py"
    script.write_text(_ANSWERING_SERVER.format(fault_server=FAULT_SERVER, answer=answer))
    destination = fault_destination(tmp_path, env=env)._replace(args=(str(script),))
    start = events.build_start_event(
        component_name=component_name, shell_type="S", metadata=None, limits=Limits()
    )

    async def attempt() -> BaseException | None:
        async with SessionBuddyClient(destination) as client:
            try:
                await client.start_session(start)
            except Exception as exc:  # the refusal looked at
                return exc
        return None

    return asyncio.run(attempt())
