"""What each provider costs a shell's own process: import + set-up time, memory, and start()/end() calls.

Each sample is a fresh process (`python benchmarks/shell_cost.py PROVIDER CALLS`, run with a
Scene's environment) that first loads what every shell loads anyway (`oneiric_session.shell`),
then times `resolve_tracker()` (the provider's imports and configuration), reads the RSS
growth (/proc/self/status VmRSS) after the resolution and CALLS start()/end() pairs, and
whether `mcp` got imported. The first pair is what a shell pays (it opens the spool); the
pairs are spaced CALL_GAP_SECONDS apart, untimed, so each call meets an idle agent as a
shell started by hand does, not one still delivering the previous call. Providers run
interleaved in the same scene; the session-buddy ones share one warm delivery agent (a
first, uncounted round starts it and fills byte-code caches; each process starts once the
spool is drained).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside measure(): the sample process must load nothing else of ours
    from common import Scene

PROVIDERS = ("noop", "memory", "session-buddy")
TARGET_CALL_MEDIAN_MS = 2.0
TARGET_NOOP_RSS_KB = 1024
CALL_GAP_SECONDS = 0.03
DRAIN_SECONDS = 120.0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def sample(provider: str, calls: int) -> dict[str, object]:
    """Run in the fresh process: the figures for one provider."""
    import oneiric_session.shell  # noqa: F401  (the bare shell: loaded before any provider)

    rss_before = _rss_kb()
    began = time.perf_counter()
    from oneiric_session.tracking.registry import resolve_tracker

    tracker = resolve_tracker(provider=provider)
    resolved = time.perf_counter()
    starts, ends = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        handle = tracker.start(component_name="bench-cost", shell_type="BenchShell")
        t1 = time.perf_counter()
        if handle is not None:
            tracker.end(handle)
        starts.append((t1 - t0) * 1000)
        ends.append((time.perf_counter() - t1) * 1000)
        if handle is None and provider != "noop":  # noop records nothing, by design
            raise SystemExit(f"{provider}: start() recorded nothing")
        time.sleep(CALL_GAP_SECONDS)
    rss_after = _rss_kb()
    tracker.close()
    return {
        "provider": getattr(tracker, "provider", "?"),
        "resolve_ms": (resolved - began) * 1000,
        "rss_kb": rss_after - rss_before,
        "mcp_imported": "mcp" in sys.modules,
        "start_ms": starts,
        "end_ms": ends,
    }


def measure(scene: Scene, *, runs: int, calls: int) -> dict[str, dict[str, list[Any]]]:
    """Interleaved fresh-process samples of every provider: provider -> field -> samples."""
    import subprocess

    from common import wait_until

    fields = ("resolve_ms", "rss_kb", "mcp_imported", "first_start_ms", "first_end_ms", "start_ms", "end_ms")
    results: dict[str, dict[str, list[Any]]] = {p: {f: [] for f in fields} for p in PROVIDERS}
    for run in range(-1, runs):  # run -1 starts the agent and fills caches: not counted
        for provider in PROVIDERS:
            wait_until(lambda: scene.depth() == 0, timeout=DRAIN_SECONDS, poll=0.02, what="the spool drained")
            out = subprocess.run(
                [sys.executable, __file__, provider, str(calls)],
                env=scene.env,
                cwd=scene.root,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if out.returncode != 0:
                raise RuntimeError(f"shell_cost {provider} failed:\n{out.stderr[-2000:]}")
            got = json.loads(out.stdout)
            if got["provider"] != provider:
                raise RuntimeError(f"asked for {provider}, resolved {got['provider']}")
            if run < 0:
                continue
            for field in ("resolve_ms", "rss_kb", "mcp_imported"):
                results[provider][field].append(got[field])
            results[provider]["first_start_ms"].append(got["start_ms"][0])
            results[provider]["first_end_ms"].append(got["end_ms"][0])
            results[provider]["start_ms"] += got["start_ms"]
            results[provider]["end_ms"] += got["end_ms"]
    return results


if __name__ == "__main__":
    print(json.dumps(sample(sys.argv[1], int(sys.argv[2]))))
