"""Smoke test of `benchmarks/run.py --quick --json`: it runs, reports every figure, leaves nothing behind.

Not a timing test: the figures are only checked to be there (and the correctness ones to hold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
SPREAD = {"n", "median", "p10", "p90", "p99"}


def _ours(root: Path) -> list[int]:
    """Live processes whose environment or command line names `root`."""
    needle = str(root).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/environ").read_bytes() + Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in data and state not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def _spread(figure: Any) -> None:
    assert isinstance(figure, dict), figure
    assert figure.keys() >= SPREAD, figure
    assert figure["n"] >= 1


def test_quick_run_reports_every_figure_and_leaves_no_process(tmp_path: Path) -> None:
    """One quick run: each section's figures with median and spread, correctness holds, no process left."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # every scratch root of the run lives under tmp_path
    result = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["mode"] == "quick"
    assert report["provisional"]

    startup = report["startup_exit"]
    _spread(startup["noop"]["prompt_ms"])
    for scenario in ("up", "hung", "missing"):
        for figure in ("prompt_ms", "exit_ms", "prompt_added_ms", "exit_added_ms"):
            _spread(startup[scenario][figure])
        assert isinstance(startup[scenario]["meets_targets"], bool)

    cost = report["shell_side"]
    for figure in ("start_ms", "end_ms"):
        _spread(cost[figure])
    assert isinstance(cost["start_added_vs_noop_ms"], float)
    for provider in ("noop", "memory", "session-buddy"):
        figures = cost["providers"][provider]
        _spread(figures["resolve_ms"])
        _spread(figures["rss_added_kb"])
        assert isinstance(figures["rss_added_vs_noop_kb"], float)
        assert figures["mcp_imported"] is False  # the shell never imports mcp, whatever the provider

    throughput = report["throughput"]
    for figure in ("agent_sessions_per_second", "bare_client_sessions_per_second", "ratio"):
        _spread(throughput[figure])
    assert throughput["exactly_once"], throughput["recorded"]
    assert throughput["dead_letters"] == 0
    assert throughput["beyond"]

    latency = report["latency"]
    for figure in ("warm_ms", "cold_ms", "bare_warm_ms", "bare_cold_ms"):
        _spread(latency["bundled"][figure])
    assert isinstance(latency["bundled"]["cold_added_ms"], float)
    assert "skipped" in latency["real_session_buddy"]  # --quick never starts the real server

    runs = report["scale"]["runs"]
    assert set(runs) == {"1", "4"}
    for n, figures in runs.items():
        for figure in ("start_ms", "resolve_ms", "call_ms", "noop_start_ms"):
            _spread(figures[figure])
        assert figures["start_ms"]["n"] == int(n)
        assert isinstance(figures["slowest_added_ms"], float)
        assert figures["exactly_once"], figures["recorded"]
        assert figures["server_processes"] == {"at_once": 1, "in_all": 1}
        assert figures["agent_processes"]["started"] >= 1
        assert figures["agent_memory"]["rss_kb"] > 0
        assert figures["server_memory"]["rss_kb"] > 0

    http = report["http_rtt"]
    for figure in ("agent_sessions_per_second", "bare_client_sessions_per_second", "ratio"):
        _spread(http[figure])
    assert http["exactly_once"], http["recorded"]
    assert http["rtt_added_ms"] == 20.0

    backlog = report["backlog"]
    for run in ("default_window", "window_1"):
        assert backlog[run]["exactly_once"], backlog[run]["recorded"]
        assert backlog[run]["events_per_second"] > 0
        assert backlog[run]["agent_peak_rss_kb"] > 0
    assert isinstance(backlog["meets_target"], bool)

    fleet = report["fleet"]
    assert fleet["exactly_once"], fleet["recorded"]
    assert fleet["dead_letters"] == 0
    _spread(fleet["append_to_answer_ms"])
    assert fleet["sessions_per_second"] > 0
    assert fleet["server_memory_kb"]["rss_kb"] > 0

    assert _ours(tmp_path) == []
