"""Does a server answer concurrent track_session_start/end calls on one MCP session correctly?

For each window W, sends `--sessions` starts with W calls in flight on one session (distinct
component names, so same-second id collisions cannot hide a mix-up; each its own cwd), then
their ends the same way, and checks: every start answered `tracked` with an id naming its own
component, every end answered `ended` echoing its own id, and (Session-Buddy 0.23.0 `chdir`s
into each start's cwd and writes `<cwd>/.claude/handoff/*.md` at each end) that each session's
handoff file landed in its own directory. Prints one JSON report.

    python scripts/probe_concurrency.py \
        --sb-python ~/.cache/oneiric-session/real-envs/session-buddy-0.23.0-*/bin/python
    python scripts/probe_concurrency.py            # the bundled server, for comparison
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).parent))
from probe_real_session_buddy import end_event, server_params, start_event


def _payload(result: Any) -> dict[str, Any]:
    if result.structured_content:
        return dict(result.structured_content)
    text = "".join(getattr(c, "text", "") for c in result.content)
    try:
        return dict(json.loads(text))
    except ValueError:
        return {"text": text[:300], "is_error": result.is_error}


async def _bounded(window: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(window)

    async def one(job: Any) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


async def probe(
    params: StdioServerParameters, home: Path, windows: list[int], sessions: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        info = client.server_info
        out["server_info"] = None if info is None else {"name": info.name, "version": info.version}
        t = time.monotonic()
        warm = await client.call_tool(
            "track_session_start", start_event("warmup", home), read_timeout_seconds=120
        )
        out["first_call_seconds"] = round(time.monotonic() - t, 2)
        out["warmup"] = _payload(warm)
        for window in windows:
            dirs = []
            for i in range(sessions):
                d = home / f"w{window}" / f"s{i}"
                d.mkdir(parents=True)
                dirs.append(d)
            comps = [f"probe-w{window}-s{i}" for i in range(sessions)]
            t = time.monotonic()
            starts = await _bounded(
                window,
                [
                    (lambda c=c, d=d: client.call_tool("track_session_start", start_event(c, d)))
                    for c, d in zip(comps, dirs, strict=True)
                ],
            )
            start_s = time.monotonic() - t
            answers = [_payload(r) for r in starts]
            ids = [a.get("session_id") for a in answers]
            bad_starts = [
                (c, a)
                for c, a in zip(comps, answers, strict=True)
                if a.get("status") != "tracked" or not str(a.get("session_id", "")).startswith(c + "-")
            ]
            t = time.monotonic()
            ends = await _bounded(
                window,
                [(lambda s=s: client.call_tool("track_session_end", end_event(str(s)))) for s in ids],
            )
            end_s = time.monotonic() - t
            end_answers = [_payload(r) for r in ends]
            bad_ends = [
                (s, a)
                for s, a in zip(ids, end_answers, strict=True)
                if a.get("status") != "ended" or a.get("session_id") != s
            ]
            misplaced = []
            for c, d in zip(comps, dirs, strict=True):
                files = list((d / ".claude" / "handoff").glob("*.md")) if (d / ".claude").exists() else []
                if not files:
                    misplaced.append(c)
            out[f"window_{window}"] = {
                "sessions": sessions,
                "starts_seconds": round(start_s, 3),
                "ends_seconds": round(end_s, 3),
                "bad_starts": bad_starts[:5],
                "bad_ends": bad_ends[:5],
                "sessions_without_handoff_in_own_cwd": len(misplaced),
                "handoff_dirs": sorted(
                    str(p.parent.parent.relative_to(home)) for p in home.rglob("handoff") if p.is_dir()
                ),
                "correct": not bad_starts and not bad_ends,
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sb-python", help="the real server's python (unset: the bundled server)")
    parser.add_argument("--windows", default="1,4,8,16")
    parser.add_argument("--sessions", type=int, default=16)
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    with tempfile.TemporaryDirectory(prefix="probe-concurrency-") as tmp:
        home = Path(tmp)
        if args.sb_python:
            params = server_params(args.sb_python, home)
        else:
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "oneiric_session", "serve", "--db", str(home / "db.sqlite3")],
                env={"HOME": str(home)},
                cwd=str(home),
            )
        report = asyncio.run(probe(params, home, windows, args.sessions))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
