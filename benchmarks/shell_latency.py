"""What tracking adds to an admin shell, felt in a terminal: time to the first prompt, and from Ctrl-D
to the process's end, tracking on vs provider `noop`, medians over repeated runs.

    python benchmarks/shell_latency.py [--runs N] [--repl stdlib|ipython] [--scenarios noop,up,hung,missing]
                                       [--json]

Each run is `oneiric-session shell` in a real pseudo-terminal (the same driver as the tests).
Scenarios run interleaved (noop, up, hung, missing, noop, ...) so drift on the machine falls on
all of them alike. Each has its own state directory, so its own spool and delivery agent:
- noop     ONEIRIC_SESSION_PROVIDER=noop (the baseline);
- up       session-buddy, the bundled server (its agent starts it on demand);
- hung     session-buddy, a server command that never answers;
- missing  session-buddy, a server command that does not exist.
A scenario is a name and a function that returns environment variables: add one to SCENARIOS.
Targets (issue 12): at most +3 ms to the first prompt and +5 ms to exit, vs noop.
Agents still running at the end are stopped (SIGTERM) before their directories go.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import reap  # also puts the checkout on the path, for tests.support

from tests.support.pty_driver import PtyProcess

PROMPT = {"stdlib": r">>> ", "ipython": r"In \[1\]: "}
TARGET_PROMPT_MS = 3.0  # issue 12 (issue 5 asked for 5)
TARGET_EXIT_MS = 5.0  # issue 12 (issue 5 asked for 10)
# Short, so agents of hung or missing servers do not linger after the benchmark.
AGENT_ENV = {
    "ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS": "5",
    "ONEIRIC_SESSION_TIMEOUTS__CONNECT_SECONDS": "2",
    "ONEIRIC_SESSION_RETRY__ATTEMPTS": "1",
}


def noop(_: Path) -> dict[str, str]:
    return {"ONEIRIC_SESSION_PROVIDER": "noop"}


def server_up(home: Path) -> dict[str, str]:
    return {"ONEIRIC_SESSION_PROVIDER": "session-buddy", "ONEIRIC_SESSION_DB": str(home / "sessions.sqlite3")}


def server_hung(_: Path) -> dict[str, str]:
    return {
        "ONEIRIC_SESSION_PROVIDER": "session-buddy",
        "ONEIRIC_SESSION_SERVER__COMMAND": sys.executable,
        "ONEIRIC_SESSION_SERVER__ARGS": json.dumps(["-c", "import time; time.sleep(3600)"]),
    }


def server_missing(_: Path) -> dict[str, str]:
    return {
        "ONEIRIC_SESSION_PROVIDER": "session-buddy",
        "ONEIRIC_SESSION_SERVER__COMMAND": "/nonexistent/session-buddy-server",
    }


SCENARIOS: dict[str, Callable[[Path], dict[str, str]]] = {
    "noop": noop,
    "up": server_up,
    "hung": server_hung,
    "missing": server_missing,
}


def environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    (home / "settings").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(home / "settings"),
        "TERM": "xterm",
        "PROMPT_TOOLKIT_NO_CPR": "1",
        **AGENT_ENV,
        **extra,
    }


def one_run(argv: list[str], env: dict[str, str], cwd: Path, prompt: str) -> tuple[float, float]:
    """Seconds from spawn to the first prompt, and from Ctrl-D to the process's end."""
    started = time.perf_counter()
    shell = PtyProcess(argv, env=env, cwd=cwd)
    try:
        shell.expect(prompt, timeout=60)
        to_prompt = time.perf_counter() - started
        leaving = time.perf_counter()
        shell.send_eof()
        status = shell.wait(timeout=60)
        to_exit = time.perf_counter() - leaving
    finally:
        shell.close()
    if status != 0:
        raise RuntimeError(f"the shell exited with {status}:\n{shell.text[-2000:]}")
    return to_prompt, to_exit


def measure(
    names: list[str], *, runs: int, warmup: int, repl: str, root: Path
) -> dict[str, dict[str, list[float]]]:
    """Interleaved runs of each scenario (homes under `root`): name -> {"prompt": [ms], "exit": [ms]}.

    Sample i of every scenario comes from the same round, so samples pair up for differences.
    """
    argv = [sys.executable, "-m", "oneiric_session", "shell", "--repl", repl]
    prompt = PROMPT[repl]
    results: dict[str, dict[str, list[float]]] = {n: {"prompt": [], "exit": []} for n in names}
    envs = {}
    for name in names:
        home = root / name
        home.mkdir()
        envs[name] = environment(home, SCENARIOS[name](home))
    for run in range(warmup + runs):
        for name in names:
            to_prompt, to_exit = one_run(argv, envs[name], root, prompt)
            if run >= warmup:
                results[name]["prompt"].append(to_prompt * 1000)
                results[name]["exit"].append(to_exit * 1000)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per scenario (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="runs per scenario not counted (default 2)")
    parser.add_argument("--repl", choices=("stdlib", "ipython"), default="stdlib")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, noop first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or "noop" not in names:
        parser.error(f"scenarios must include noop and come from {sorted(SCENARIOS)}; unknown: {unknown}")

    with tempfile.TemporaryDirectory(prefix="shell-latency-") as tmp:
        try:
            results = measure(names, runs=args.runs, warmup=args.warmup, repl=args.repl, root=Path(tmp))
        finally:
            reap(Path(tmp))  # the agents (and their servers) still running, before their files go

    summary = {
        name: {kind: round(statistics.median(values), 2) for kind, values in r.items()}
        for name, r in results.items()
    }
    base = summary["noop"]
    for s in summary.values():
        s["prompt_delta"] = round(s["prompt"] - base["prompt"], 2)
        s["exit_delta"] = round(s["exit"] - base["exit"], 2)
        s["meets_targets"] = s["prompt_delta"] <= TARGET_PROMPT_MS and s["exit_delta"] <= TARGET_EXIT_MS
    if args.json:
        print(json.dumps({"repl": args.repl, "runs": args.runs, "median_ms": summary}, indent=2))
    else:
        print(
            f"repl={args.repl} runs={args.runs} "
            f"(medians, ms; targets +{TARGET_PROMPT_MS:g} / +{TARGET_EXIT_MS:g})"
        )
        print(f"{'scenario':<10}{'prompt':>10}{'Δ':>9}{'exit':>10}{'Δ':>9}  ok")
        for name, s in summary.items():
            print(
                f"{name:<10}{s['prompt']:>10.1f}{s['prompt_delta']:>+9.1f}{s['exit']:>10.1f}"
                f"{s['exit_delta']:>+9.1f}  {'yes' if s['meets_targets'] else 'NO'}"
            )
    return 0 if all(s["meets_targets"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
