"""The benchmark suite: every figure of issue 6, each against its baseline, in one run.

    python benchmarks/run.py [--json] [--quick] [--no-real]

1. start-up and exit of `oneiric-session shell` in a pty: tracking (server up, hung, missing)
   vs provider noop (benchmarks/shell_latency.py);
2. shell-side cost: start()/end() in the shell's process, and the time and memory each
   provider adds to a bare shell process (benchmarks/shell_cost.py);
3. throughput: sessions/s delivered end to end vs a bare mcp.Client (benchmarks/delivery.py);
4. latency: append-to-answer, warm and cold, bundled server and real Session-Buddy 0.23.0
   (benchmarks/delivery.py);
5. scale: N shells starting at once against one server (benchmarks/scale.py);
6. http_rtt: throughput over Streamable HTTP with 20 ms of RTT added by a delaying proxy,
   vs a bare sequential client through the same proxy (benchmarks/fleet.py);
7. backlog: 10,000 spooled events drained to the bundled server: time, events/s, agent peak RSS;
8. fleet: 32 hosts (state dirs, spools, agents) delivering to one `serve --http` at once.
Every process runs under a scratch root (HOME and XDG dirs inside it) and is ended when its
section ends. Spread = p10-p90 over repeated runs. --quick: few repetitions, small N, no real
Session-Buddy (a smoke test of the suite, not figures to quote). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import delivery
import fleet
import scale
import sessions_query
import shell_cost
import shell_latency
from common import Scene, scratch, summary


@dataclass(frozen=True)
class Plan:
    """How many repetitions each section gets."""

    startup_runs: int
    startup_warmup: int
    cost_runs: int
    cost_calls: int
    throughput_rounds: int
    throughput_sessions: int
    latency_cold: int
    latency_warm: int
    real_cold: int
    real_warm: int
    scale_n: tuple[int, ...]


FULL = Plan(40, 1, 8, 20, 5, 100, 5, 20, 3, 10, (1, 8, 32, 128))
QUICK = Plan(2, 0, 1, 5, 2, 10, 2, 3, 0, 0, (1, 4))


@dataclass(frozen=True)
class FleetPlan:
    """Sizes of the sections 6-8 (issue 12): HTTP at +RTT, the backlog, the fleet."""

    http_rounds: int
    http_sessions: int
    backlog_events: int
    backlog_window_1_events: int  # the one-call-in-flight baseline: a smaller backlog, same rate
    fleet_hosts: int
    fleet_sessions: int


FULL_FLEET = FleetPlan(3, 60, 10_000, 2_000, 32, 10)
QUICK_FLEET = FleetPlan(1, 5, 60, 40, 3, 2)
PROVISIONAL = (
    "provisional: measured while other CPU-heavy work may share the machine; "
    "quote figures only from a run on a quiet machine"
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_difference(values: list[float], baseline: list[float]) -> float:
    return round(float(statistics.median(values) - statistics.median(baseline)), 2)


# -- 1. start-up and exit --------------------------------------------------------------


def startup_exit(tmp: Path, plan: Plan) -> dict[str, Any]:
    names = list(shell_latency.SCENARIOS)  # noop, up, hung, missing
    with scratch(tmp, "startup") as root:
        raw = shell_latency.measure(
            names, runs=plan.startup_runs, warmup=plan.startup_warmup, repl="stdlib", root=root
        )
    base = raw["noop"]
    out: dict[str, Any] = {
        "what": "ms from spawning `oneiric-session shell --repl stdlib` in a pty to its first prompt, "
        "and from Ctrl-D to the process's end; added = paired difference with the noop run of the "
        "same round",
        "runs": plan.startup_runs,
        "targets_added_ms": {"prompt": shell_latency.TARGET_PROMPT_MS, "exit": shell_latency.TARGET_EXIT_MS},
        "noop": {"prompt_ms": summary(base["prompt"]), "exit_ms": summary(base["exit"])},
    }
    for name in names[1:]:
        added = {
            kind: [a - b for a, b in zip(raw[name][kind], base[kind], strict=True)]
            for kind in ("prompt", "exit")
        }
        out[name] = {
            "prompt_ms": summary(raw[name]["prompt"]),
            "exit_ms": summary(raw[name]["exit"]),
            "prompt_added_ms": summary(added["prompt"]),
            "exit_added_ms": summary(added["exit"]),
            "meets_targets": statistics.median(added["prompt"]) <= shell_latency.TARGET_PROMPT_MS
            and statistics.median(added["exit"]) <= shell_latency.TARGET_EXIT_MS,
        }
    return out


# -- 2. shell-side cost ----------------------------------------------------------------


def shell_side(tmp: Path, plan: Plan) -> dict[str, Any]:
    with scratch(tmp, "cost") as root:
        scene = Scene(root, agent__idle_exit_seconds="120")
        raw = shell_cost.measure(scene, runs=plan.cost_runs, calls=plan.cost_calls)
        scene.stop_agents()
    sb, noop = raw["session-buddy"], raw["noop"]
    providers = {
        name: {
            "resolve_ms": summary(r["resolve_ms"]),
            "rss_added_kb": summary(r["rss_kb"], digits=0),
            "mcp_imported": any(r["mcp_imported"]),
            "first_start_ms": summary(r["first_start_ms"], digits=3),
            "first_end_ms": summary(r["first_end_ms"], digits=3),
            "start_ms": summary(r["start_ms"], digits=3),
            "end_ms": summary(r["end_ms"], digits=3),
            "resolve_added_vs_noop_ms": median_difference(r["resolve_ms"], noop["resolve_ms"]),
            "rss_added_vs_noop_kb": median_difference(r["rss_kb"], noop["rss_kb"]),
        }
        for name, r in raw.items()
    }
    noop_rss = statistics.median(noop["rss_kb"])
    return {
        "what": "in fresh processes that already loaded oneiric_session.shell (the bare shell): "
        "resolve_tracker() time, RSS growth after it and the calls, the first start()/end() (opens "
        "the spool: what a shell pays) and every start()/end() (spaced so the warm agent is idle); "
        "medians over processes, p99 over all calls",
        "processes_per_provider": plan.cost_runs,
        "calls_per_process": plan.cost_calls,
        "first_start_ms": providers["session-buddy"]["first_start_ms"],
        "first_end_ms": providers["session-buddy"]["first_end_ms"],
        "start_ms": providers["session-buddy"]["start_ms"],
        "end_ms": providers["session-buddy"]["end_ms"],
        "start_added_vs_noop_ms": median_difference(sb["start_ms"], noop["start_ms"]),
        "end_added_vs_noop_ms": median_difference(sb["end_ms"], noop["end_ms"]),
        "target_median_ms": shell_cost.TARGET_CALL_MEDIAN_MS,
        "meets_target": max(statistics.median(sb["start_ms"]), statistics.median(sb["end_ms"]))
        < shell_cost.TARGET_CALL_MEDIAN_MS,
        "providers": providers,
        "noop_target": "no mcp import, < 1 MB",
        "noop_meets_target": noop_rss < shell_cost.TARGET_NOOP_RSS_KB and not any(noop["mcp_imported"]),
    }


# -- 3. throughput ---------------------------------------------------------------------

TARGET_STDIO_RATIO = 1.5  # issue 12 (issue 6 asked for 1.0)


def throughput(tmp: Path, plan: Plan) -> dict[str, Any]:
    with scratch(tmp, "throughput") as root:
        scene = Scene(root)
        raw = asyncio.run(
            delivery.throughput(scene, rounds=plan.throughput_rounds, sessions=plan.throughput_sessions)
        )
        scene.stop_agents()
    ratios = [a / b for a, b in zip(raw["agent"], raw["bare"], strict=True)]
    return {
        "what": "sessions (start+end) per second: one process appends K sessions, the warm agent "
        "delivers them to the bundled server (from the first append to the last answer) vs a bare "
        "mcp.Client making the same 2K calls one after another to the same server and database; "
        "ratio per round",
        "sessions_per_round": plan.throughput_sessions,
        "rounds": plan.throughput_rounds,
        "agent_sessions_per_second": summary(raw["agent"], 1),
        "bare_client_sessions_per_second": summary(raw["bare"], 1),
        "ratio": summary(ratios, 3),
        "append_ms_per_session": summary(raw["append_ms_per_session"], 3),
        "target_ratio": TARGET_STDIO_RATIO,
        "meets_target": statistics.median(ratios) >= TARGET_STDIO_RATIO,
        "exactly_once": raw["exactly_once"],
        "recorded": raw["recorded"],
        "expected": raw["expected"],
        "dead_letters": raw["dead_letters"],
        "beyond": delivery.BEYOND,
    }


# -- 4. latency ------------------------------------------------------------------------


def _latency_figures(raw: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "warm_ms": summary(raw["warm"]),
        "cold_ms": summary(raw["cold"], 0),
        "bare_warm_ms": summary(raw["bare_warm"]),
        "bare_cold_ms": summary(raw["bare_cold"], 0),
        "warm_added_ms": median_difference(raw["warm"], raw["bare_warm"]),
        "cold_added_ms": median_difference(raw["cold"], raw["bare_cold"]),
    }


def latency(tmp: Path, plan: Plan, *, real: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "ms from just before start() to the agent's acknowledgement of the server's answer; "
        "cold = no agent running and no server started; baseline (bare_*) = one track_session_start "
        "on a warm bare mcp.Client, and spawn + handshake + first call for a fresh one; "
        "added = difference of medians",
    }
    with scratch(tmp, "latency-bundled") as root:
        scene = Scene(root)
        raw = asyncio.run(
            delivery.latency(
                scene,
                delivery.bundled(scene),
                cold=plan.latency_cold,
                warm=plan.latency_warm,
                component="bench-latency",
            )
        )
        scene.stop_agents()
    out["bundled"] = _latency_figures(raw)
    python, why = delivery.session_buddy_python(os.environ)
    if not real or plan.real_cold == 0:
        out["real_session_buddy"] = {
            "skipped": "--quick or --no-real: the real server takes 5-10 s per cold run"
        }
    elif python is None:
        out["real_session_buddy"] = {"skipped": why}
    else:
        with scratch(tmp, "latency-real") as root:
            scene = Scene(root)
            server = delivery.real_session_buddy(python, root / "sb-home")
            raw = asyncio.run(
                delivery.latency(
                    scene, server, cold=plan.real_cold, warm=plan.real_warm, component="bench-latency"
                )
            )
            scene.stop_agents()
        out["real_session_buddy"] = {"python": str(python), **_latency_figures(raw)}
    return out


# -- 5. scale --------------------------------------------------------------------------


def _memory(entries: list[dict[str, Any]]) -> dict[str, int | None]:
    if not entries:
        return {"rss_kb": None, "peak_kb": None}
    return {"rss_kb": max(e["rss_kb"] for e in entries), "peak_kb": max(e["hwm_kb"] for e in entries)}


TARGET_SCALE_128_MS = 300.0  # issue 12: the slowest of 128 shells at once, added over noop


def scale_figures(tmp: Path, plan: Plan) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    with scratch(tmp, "scale") as root:
        for n in plan.scale_n:
            log(f"scale: {n} shells at once")
            scene = scale.new_scene(root / f"n{n}")
            raw = scale.measure(scene, n)
            scene.stop_agents()
            runs[str(n)] = {
                "start_ms": summary(raw["start_ms"]),
                "resolve_ms": summary(raw["resolve_ms"]),
                "call_ms": summary(raw["call_ms"], 3),
                "noop_start_ms": summary(raw["noop_start_ms"]),
                "slowest_added_ms": round(max(raw["start_ms"]) - max(raw["noop_start_ms"]), 2),
                "exactly_once": raw["exactly_once"],
                "recorded": raw["recorded"],
                "dead_letters": raw["dead_letters"],
                "server_processes": raw["server_processes"],
                "agent_processes": raw["agent_processes"],
                "agent_memory": _memory(raw["memory"]["agent"]),
                "server_memory": _memory(raw["memory"]["server"]),
            }
    return {
        "what": scale.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "start_ms": "resolve_tracker() + start() in each shell (resolve_ms and call_ms: the two apart)",
        "slowest_added_ms": "slowest session-buddy shell's start_ms minus the slowest noop shell's",
        "target_server_processes": 1,
        "target_slowest_added_ms_at_128": TARGET_SCALE_128_MS,
        "meets_target": runs.get("128", {}).get("slowest_added_ms", float("inf")) <= TARGET_SCALE_128_MS,
        "runs": runs,
    }


# -- 6-8. HTTP at +20 ms RTT, the backlog, the fleet (benchmarks/fleet.py) -----------------

TARGET_HTTP_RATIO = 5.0
TARGET_BACKLOG_SECONDS = 10.0
TARGET_BACKLOG_RSS_KB = 100 * 1024
TARGET_FLEET_P99_MS = 1000.0


def http_rtt(tmp: Path, plan: FleetPlan) -> dict[str, Any]:
    with scratch(tmp, "http-rtt") as root:
        raw = asyncio.run(
            fleet.http_rtt(root, rounds=plan.http_rounds, sessions=plan.http_sessions, rtt_ms=fleet.RTT_MS)
        )
    ratios = [a / b for a, b in zip(raw["agent"], raw["bare"], strict=True)]
    return {
        "what": fleet.__doc__.split("\n\n")[1].replace("\n", " "),
        "rtt_added_ms": fleet.RTT_MS,
        "sessions_per_round": plan.http_sessions,
        "rounds": plan.http_rounds,
        "agent_sessions_per_second": summary(raw["agent"], 1),
        "bare_client_sessions_per_second": summary(raw["bare"], 1),
        "ratio": summary(ratios, 3),
        "target_ratio": TARGET_HTTP_RATIO,
        "meets_target": statistics.median(ratios) >= TARGET_HTTP_RATIO,
        "exactly_once": raw["exactly_once"],
        "recorded": raw["recorded"],
        "expected": raw["expected"],
        "dead_letters": raw["dead_letters"],
    }


def backlog(tmp: Path, plan: FleetPlan) -> dict[str, Any]:
    with scratch(tmp, "backlog") as root:
        pipelined = fleet.backlog(root / "window-default", events_count=plan.backlog_events, window=None)
        one = fleet.backlog(root / "window-1", events_count=plan.backlog_window_1_events, window=1)
    return {
        "what": fleet.__doc__.split("\n\n")[2].replace("\n", " "),
        "default_window": pipelined,
        "window_1": one,
        "speed_up_vs_window_1": round(pipelined["events_per_second"] / one["events_per_second"], 2),
        "target_seconds_for_10000": TARGET_BACKLOG_SECONDS,
        "target_peak_rss_kb": TARGET_BACKLOG_RSS_KB,
        "meets_target": pipelined["seconds"] * 10_000 / plan.backlog_events <= TARGET_BACKLOG_SECONDS
        and pipelined["agent_peak_rss_kb"] <= TARGET_BACKLOG_RSS_KB,
    }


def fleet_figures(tmp: Path, plan: FleetPlan) -> dict[str, Any]:
    with scratch(tmp, "fleet") as root:
        raw = fleet.fleet(root, hosts=plan.fleet_hosts, sessions=plan.fleet_sessions)
    latencies = raw.pop("append_to_answer_ms")
    return {
        "what": fleet.__doc__.split("\n\n")[3].replace("\n", " "),
        **raw,
        "append_to_answer_ms": summary(latencies, 1),
        "target_p99_ms": TARGET_FLEET_P99_MS,
        "meets_target": raw["exactly_once"] and common.percentile(latencies, 0.99) <= TARGET_FLEET_P99_MS,
    }


# -- the run ---------------------------------------------------------------------------


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def text_report(result: dict[str, Any]) -> str:
    """A short human summary; --json has everything."""
    lines = [f"benchmarks ({result['mode']}, {result['elapsed_seconds']} s) - {PROVISIONAL}"]
    s = result.get("startup_exit", {})
    if s and "error" not in s:
        for name in ("up", "hung", "missing"):
            lines.append(
                f"  startup {name:<8} prompt +{s[name]['prompt_added_ms']['median']} ms  "
                f"exit +{s[name]['exit_added_ms']['median']} ms  (targets "
                f"+{shell_latency.TARGET_PROMPT_MS:g}/+{shell_latency.TARGET_EXIT_MS:g})"
            )
    c = result.get("shell_side", {})
    if c and "error" not in c:
        lines.append(
            f"  start() median {c['start_ms']['median']} ms p99 {c['start_ms']['p99']} ms; "
            f"end() median {c['end_ms']['median']} ms p99 {c['end_ms']['p99']} ms (target < 2)"
        )
        for name, p in c["providers"].items():
            lines.append(
                f"  provider {name:<14} resolve {p['resolve_ms']['median']} ms  "
                f"RSS +{p['rss_added_kb']['median']} kB  mcp imported: {p['mcp_imported']}"
            )
    t = result.get("throughput", {})
    if t and "error" not in t:
        lines.append(
            f"  throughput ratio {t['ratio']['median']} (agent {t['agent_sessions_per_second']['median']}"
            f"/s vs bare {t['bare_client_sessions_per_second']['median']}/s), exactly once: "
            f"{t['exactly_once']}"
        )
    lat = result.get("latency", {})
    if lat and "error" not in lat:
        for name in ("bundled", "real_session_buddy"):
            f = lat[name]
            if "skipped" in f:
                lines.append(f"  latency {name}: skipped ({f['skipped']})")
            else:
                lines.append(
                    f"  latency {name}: warm {f['warm_ms']['median']} ms (+{f['warm_added_ms']}), "
                    f"cold {f['cold_ms']['median']} ms (+{f['cold_added_ms']})"
                )
    sc = result.get("scale", {})
    if sc and "error" not in sc:
        for n, r in sc["runs"].items():
            lines.append(
                f"  scale N={n:<4} slowest +{r['slowest_added_ms']} ms  once: {r['exactly_once']}  "
                f"servers {r['server_processes']['in_all']}  agent RSS {r['agent_memory']['rss_kb']} kB"
                f"  server RSS {r['server_memory']['rss_kb']} kB"
            )
    if (q := result.get("sessions_query", {})) and "error" not in q:
        page = q["query_ms"]["last_first_page"]
        lines.append(f"  last over {q['sessions']} sessions: first page {page['median']} ms (target < 100)")
    h = result.get("http_rtt", {})
    if h and "error" not in h:
        lines.append(
            f"  http +{h['rtt_added_ms']:g} ms RTT ratio {h['ratio']['median']} (agent "
            f"{h['agent_sessions_per_second']['median']}/s vs bare "
            f"{h['bare_client_sessions_per_second']['median']}/s; target {h['target_ratio']}), "
            f"exactly once: {h['exactly_once']}"
        )
    b = result.get("backlog", {})
    if b and "error" not in b:
        d, one = b["default_window"], b["window_1"]
        lines.append(
            f"  backlog {d['events']} events in {d['seconds']} s ({d['events_per_second']}/s; window 1: "
            f"{one['events_per_second']}/s), agent peak RSS {d['agent_peak_rss_kb']} kB, "
            f"once: {d['exactly_once']}"
        )
    f = result.get("fleet", {})
    if f and "error" not in f:
        lines.append(
            f"  fleet {f['hosts']} hosts: {f['sessions_per_second']} sessions/s, append-to-answer p50 "
            f"{f['append_to_answer_ms']['median']} p99 {f['append_to_answer_ms']['p99']} ms, once: "
            f"{f['exactly_once']}, server RSS {f['server_memory_kb']['rss_kb']} kB"
        )
    for name, section in result.items():
        if isinstance(section, dict) and "error" in section:
            lines.append(f"  {name}: FAILED: {section['error'].splitlines()[-1]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (figures not to quote)")
    parser.add_argument("--no-real", action="store_true", help="skip the real Session-Buddy latency")
    parser.add_argument(
        "--only",
        metavar="SECTION[,SECTION]",
        default=None,
        help="run only these sections (names as in the JSON)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    fleet_plan = QUICK_FLEET if args.quick else FULL_FLEET
    began = time.monotonic()
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "provisional": PROVISIONAL,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_before": _load(),
        },
    }
    sections: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
        ("startup_exit", lambda tmp: startup_exit(tmp, plan)),
        ("shell_side", lambda tmp: shell_side(tmp, plan)),
        ("throughput", lambda tmp: throughput(tmp, plan)),
        ("latency", lambda tmp: latency(tmp, plan, real=not args.no_real)),
        ("scale", lambda tmp: scale_figures(tmp, plan)),
        ("sessions_query", lambda tmp: sessions_query.section(tmp, quick=args.quick)),
        ("http_rtt", lambda tmp: http_rtt(tmp, fleet_plan)),
        ("backlog", lambda tmp: backlog(tmp, fleet_plan)),
        ("fleet", lambda tmp: fleet_figures(tmp, fleet_plan)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in sections}
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        sections = [(name, section) for name, section in sections if name in wanted]
    with tempfile.TemporaryDirectory(prefix="oneiric-bench-") as tmp:
        for number, (name, section) in enumerate(sections, 1):
            log(f"{number}/{len(sections)} {name}")
            started = time.monotonic()
            try:
                result[name] = section(Path(tmp))
            except Exception:
                result[name] = {"error": traceback.format_exc()}
            result[name]["seconds"] = round(time.monotonic() - started, 1)
        common.reap(Path(tmp))
    result["machine"]["load_average_after"] = _load()
    result["elapsed_seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2) if args.json else text_report(result))
    return 1 if any(isinstance(s, dict) and "error" in s for s in result.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
