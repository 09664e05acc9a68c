"""Measure the real Session-Buddy 0.23.0 over stdio with a bare mcp 2.x client.

Checks the facts CONTRACT.md section 1 states: spawn-to-initialized time (mode auto and
legacy), call latencies, answer shapes, stdout noise, refusals, the auth-on failure forms
and how long closing the client takes. Prints one JSON report on stdout.

    /root/.cache/oneiric-session/dev311/bin/python scripts/probe_real_session_buddy.py \
        --sb-python "$SESSION_BUDDY_PYTHON"

Needs mcp>=2.3 and pyjwt (the dev venv has both). Every server gets its own scratch HOME.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from oneiric_session.config.loader import SESSION_BUDDY_STDIO_CODE as SERVE

SECRET = "probe-secret-" + "x" * 32  # only ever given to the throwaway server below


def server_params(
    sb_python: str, home: Path, extra_env: dict[str, str] | None = None
) -> StdioServerParameters:
    # The stdio client passes only HOME/PATH/USER/... plus `env`: SESSION_BUDDY_TOOL_PROFILE stays unset.
    env = {"HOME": str(home), **(extra_env or {})}
    return StdioServerParameters(command=sb_python, args=["-c", SERVE], env=env, cwd=str(home))


def start_event(component: str, cwd: Path, **overrides: Any) -> dict[str, Any]:
    event = {
        "event_version": "1.0",
        "event_id": str(uuid.uuid4()),
        "event_type": "session_start",
        "component_name": component,
        "shell_type": "ProbeShell",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "pid": os.getpid(),
        "user": {"username": getpass.getuser(), "home": str(cwd)},
        "hostname": platform.node(),
        "environment": {
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "cwd": str(cwd),
        },
        "metadata": {"probe": True},
    }
    event.update(overrides)
    return event


def end_event(session_id: str, **overrides: Any) -> dict[str, Any]:
    event = {
        "session_id": session_id,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": "session_end",
        "metadata": {"exit_reason": "user_exit", "duration_seconds": 1.5},
    }
    event.update(overrides)
    return event


def shape(result: Any) -> dict[str, Any]:
    return {
        "is_error": result.is_error,
        "structured_content": result.structured_content,
        "content": [getattr(c, "text", repr(c)) for c in result.content],
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def timed_call(client: Client, tool: str, args: dict[str, Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = await client.call_tool(tool, args, read_timeout_seconds=60)
    return time.perf_counter() - t0, result


async def contract_run(sb_python: str, calls: int) -> dict[str, Any]:
    """Mode auto: timings, answer shapes, refusals, duplicate ids, close time."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        client = Client(server_params(sb_python, home), mode="auto", read_timeout_seconds=60)
        await client.__aenter__()
        out["spawn_to_initialized_ms"] = ms(time.perf_counter() - t0)
        out["protocol_version"] = client.protocol_version
        out["server_info"] = client.server_info.model_dump() if client.server_info else None
        try:
            tools = await client.list_tools()
            out["tools"] = len(tools.tools)
            schema = next(t.input_schema for t in tools.tools if t.name == "track_session_start")
            out["track_session_start_additionalProperties"] = schema.get("additionalProperties")

            first, result = await timed_call(client, "track_session_start", start_event("probe", home))
            out["first_start_ms"] = ms(first)
            out["start_answer"] = shape(result)
            session_id = result.structured_content["session_id"]

            later = []
            for i in range(calls):
                seconds, _ = await timed_call(client, "track_session_start", start_event(f"probe-{i}", home))
                later.append(seconds)
            out["later_start_ms_median"] = ms(statistics.median(later))
            out["later_start_ms_max"] = ms(max(later))

            seconds, result = await timed_call(client, "track_session_end", end_event(session_id))
            out["end_ms"] = ms(seconds)
            out["end_answer"] = shape(result)
            _, result = await timed_call(client, "track_session_end", end_event("no-such-session-1"))
            out["end_unknown_id_answer"] = shape(result)

            same_second = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            ids = []
            for _ in range(2):
                _, result = await timed_call(
                    client, "track_session_start", start_event("dup", home, timestamp=same_second)
                )
                ids.append(result.structured_content["session_id"])
            out["same_second_ids"] = ids

            _, result = await timed_call(
                client, "track_session_start", start_event("probe", home / "missing-dir")
            )
            out["refused_bad_cwd"] = shape(result)
            _, result = await timed_call(client, "track_session_start", start_event("bad name!", home))
            out["refused_bad_component"] = shape(result)
            _, result = await timed_call(client, "track_session_start", start_event("probe", home, extra=1))
            out["unknown_argument"] = shape(result)
            _, result = await timed_call(client, "track_session_start", start_event("probe", home, pid="x"))
            out["wrong_type"] = shape(result)
            _, result = await timed_call(client, "health_check", {})
            out["health_check"] = {**shape(result), "content": [c[:120] for c in shape(result)["content"]]}
            out["server_rss_mb"] = server_rss_mb()
        finally:
            t0 = time.perf_counter()
            await client.__aexit__(None, None, None)
            out["close_ms"] = ms(time.perf_counter() - t0)
        out["handoff_files_written_in_cwd"] = len(list((home / ".claude" / "handoff").glob("*.md")))
    return out


async def legacy_run(sb_python: str) -> dict[str, Any]:
    """Mode legacy: the initialize handshake only, no server/discover probe."""
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        async with Client(server_params(sb_python, home), mode="legacy", read_timeout_seconds=60) as client:
            initialized = time.perf_counter() - t0
            version = client.protocol_version
            first, result = await timed_call(client, "track_session_start", start_event("legacy", home))
            status = result.structured_content["status"]
            t1 = time.perf_counter()
        return {
            "spawn_to_initialized_ms": ms(initialized),
            "protocol_version": version,
            "first_start_ms": ms(first),
            "status": status,
            "close_ms": ms(time.perf_counter() - t1),
        }


async def auth_run(sb_python: str) -> dict[str, Any]:
    """SESSION_BUDDY_SECRET set: no token, a garbage token, a valid HS256 JWT."""
    import jwt

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        home = Path(tmp)
        params = server_params(sb_python, home, {"SESSION_BUDDY_SECRET": SECRET})
        async with Client(params, mode="legacy", read_timeout_seconds=60) as client:
            now = int(time.time())
            claims = {
                "iss": "session-buddy",
                "sub": "probe",
                "aud": "session-buddy",
                "iat": now,
                "exp": now + 3600,
                "jti": str(uuid.uuid4()),
                "scopes": ["read"],
            }
            valid = jwt.encode(claims, SECRET, algorithm="HS256")
            for label, token in (("no_token", None), ("garbage_token", "not-a-jwt"), ("valid_jwt", valid)):
                event = start_event("auth", home)
                if token is not None:
                    event["token"] = token
                _, result = await timed_call(client, "track_session_start", event)
                answer = shape(result)
                answer["content"] = [c.replace(valid, "<token>") for c in answer["content"]]
                out[f"start_{label}"] = answer
            _, result = await timed_call(client, "track_session_end", end_event("auth-x", token=valid))
            out["end_valid_jwt"] = shape(result)
            out["end_valid_jwt"]["content"] = [
                c.replace(valid, "<token>") for c in out["end_valid_jwt"]["content"]
            ]
    return out


def raw_run(sb_python: str) -> dict[str, Any]:
    """Raw pipes: the stdout lines before JSON-RPC, and the answer to server/discover."""
    with tempfile.TemporaryDirectory(prefix="sb-probe-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "SESSION_BUDDY_TOOL_PROFILE"} | {"HOME": tmp}
        proc = subprocess.Popen(
            [sb_python, "-c", SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp,
            text=True,
            bufsize=1,
        )
        try:
            assert proc.stdin and proc.stdout
            discover = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "server/discover",
                "params": {"protocolVersion": "2026-07-28"},
            }
            proc.stdin.write(json.dumps(discover) + "\n")
            proc.stdin.flush()
            noise: list[str] = []
            answer = None
            deadline = time.monotonic() + 30
            while answer is None and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 1)
                if not ready:
                    continue
                line = proc.stdout.readline()
                if not line:
                    break
                try:
                    answer = json.loads(line)
                except ValueError:
                    noise.append(line.rstrip("\n"))
            return {
                "stdout_noise_lines": len(noise),
                "stdout_noise_sample": noise[:3],
                "server_discover_answer": answer,
            }
        finally:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()


def server_rss_mb() -> float | None:
    """RSS of our child server (the only python child of this process)."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == me:
            return round(int(fields["VmRSS"].split()[0]) / 1024, 1)
    return None


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sb-python", required=True, help="python of the session-buddy==0.23.0 venv")
    parser.add_argument("--calls", type=int, default=10, help="later track_session_start calls to time")
    args = parser.parse_args()
    report = {
        "raw": raw_run(args.sb_python),
        "auto": await contract_run(args.sb_python, args.calls),
        "legacy": await legacy_run(args.sb_python),
        "auth": await auth_run(args.sb_python),
    }
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
