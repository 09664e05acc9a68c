"""Real shells, agents and the bundled server as subprocesses, all isolated under a test's tmp dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from oneiric_session.spool import Spool
from oneiric_session.spool.outbox_reader import read_outbox

CLI = [sys.executable, "-m", "oneiric_session"]
# Root reads any file; without these two capabilities its permission checks are an ordinary user's.
AS_ORDINARY_USER = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)
KILLING_AGENT = str(Path(__file__).with_name("killing_agent.py"))
# Every wait on another process is bounded by this (CI machines are slow, 2 cores).
WAIT_SECONDS = 60.0
_POLL_SECONDS = 0.05

# A shell: starts `count` sessions through the drop-in emitter, ends them, or (with --hold)
# prints their handles and waits on stdin (so a test can kill it mid-session).
SHELL = textwrap.dedent(
    """
    import asyncio, sys
    from oneiric_session import SessionEventEmitter
    count, hold = int(sys.argv[1]), sys.argv[2] == "hold"
    emitter = SessionEventEmitter(component_name=sys.argv[3])
    async def main():
        handles = [await emitter.emit_session_start("TestShell", {"n": i}) for i in range(count)]
        print(" ".join(str(h) for h in handles), flush=True)
        if hold:
            sys.stdin.read()
        for handle in handles:
            assert await emitter.emit_session_end(handle, {"duration_seconds": None})
        print("mcp" in sys.modules, flush=True)
    asyncio.run(main())
    """
)


class Scene:
    """One isolated user: its HOME/XDG dirs, settings via environment, the bundled server's database."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.root = tmp_path
        self.db = tmp_path / "server.sqlite3"
        self.spool_path = tmp_path / "state" / "oneiric-session" / "spool.sqlite3"
        run = tmp_path / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        (tmp_path / "settings").mkdir(exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_RUNTIME_DIR": str(run),
            "ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path / "settings"),
            # Explicit: the default would follow this (test) process's XDG dirs, not this env's.
            "ONEIRIC_SESSION_SPOOL__PATH": str(self.spool_path),
            "ONEIRIC_SESSION_RETRY__ATTEMPTS": "1",
            "ONEIRIC_SESSION_RETRY__WAIT_MIN_SECONDS": "0.1",
            "ONEIRIC_SESSION_RETRY__WAIT_MAX_SECONDS": "0.5",
            "ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS": "2",
        }
        self.use_bundled_server()
        self.configure(**settings)

    def configure(self, **settings: Any) -> None:
        """ONEIRIC_SESSION_<NAME> for each setting (`server__env={...}` -> JSON)."""
        for name, value in settings.items():
            key = "ONEIRIC_SESSION_" + name.upper()
            self.env[key] = value if isinstance(value, str) else json.dumps(value)

    def use_bundled_server(self) -> None:
        self.configure(
            server__command=sys.executable,
            server__args=["-m", "oneiric_session", "serve", "--db", str(self.db)],
        )

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = WAIT_SECONDS,
        ordinary_user: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """The command line in the scene; `ordinary_user`: its permission checks an ordinary user's."""
        return subprocess.run(
            [*(AS_ORDINARY_USER if ordinary_user else []), *CLI, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The command line in the scene, started (`popen`)."""
        return self.popen([*CLI, *args])

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        """`argv` started in the scene, with pipes for its stdin, stdout and stderr."""
        return subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )

    def shell(
        self,
        count: int = 1,
        *,
        hold: bool = False,
        component: str = "demo",
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", SHELL, str(count), "hold" if hold else "go", component],
            env={**self.env, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )

    def run_shell(self, count: int = 1, **kwargs: Any) -> list[str]:
        """Run a shell to completion; its handles. Fails if it imported mcp or printed a traceback."""
        proc = self.shell(count, **kwargs)
        out, err = proc.communicate(timeout=WAIT_SECONDS)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        handles, imported_mcp = out.split("\n")[:2]
        assert imported_mcp == "False"
        return handles.split()

    def agent(
        self, *args: str, env: Mapping[str, str] | None = None, kill_after: str | None = None
    ) -> subprocess.Popen[str]:
        """`oneiric-session agent --foreground`; with `kill_after` ("start", "end:3", ...) it
        SIGKILLs itself after such an answer, before the acknowledgement (support/killing_agent.py)."""
        command = [*CLI, "agent"] if kill_after is None else [sys.executable, KILLING_AGENT, kill_after]
        return subprocess.Popen(
            [*command, "--foreground", "--spool", str(self.spool_path), *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.root,
        )

    def start_agent(
        self, *args: str, log: Path | None = None, kill_after: str | None = None
    ) -> subprocess.Popen[str]:
        """`agent()` logging to `log` (by default where a spawned agent logs), returned once it holds
        the lock and listens. If it exits or hangs first, the failure shows its stderr and log."""
        from oneiric_session.wakeup import agent_log_path

        log = log or agent_log_path(self.spool_path)
        agent = self.agent("--log-file", str(log), *args, kill_after=kill_after)

        def taken() -> bool:
            if agent.poll() is not None:
                told = _told(agent, log)
                raise AssertionError(f"the agent exited ({agent.returncode}) before taking the spool{told}")
            return self.agent_pid() == agent.pid

        try:
            wait_until(taken, what="the agent to take the spool")
        except AssertionError as exc:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
                raise AssertionError(f"{exc}{_told(agent, log)}") from None
            raise
        return agent

    def sessions(self) -> list[dict[str, Any]]:
        result = self.run("sessions", "--json", "--db", str(self.db))
        assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
        return json.loads(result.stdout)

    def spool(self) -> Spool:
        return Spool(self.spool_path)

    def depth(self) -> int:
        """Events waiting: in the spool, and in the shells' outbox (before any agent made the spool)."""
        if not self.spool_path.exists():
            return len(read_outbox(self.spool_path))
        with self.spool() as spool:
            return spool.stats().depth

    def dead(self) -> int:
        if not self.spool_path.exists():
            return 0
        with self.spool() as spool:
            return spool.stats().dead

    def agent_pid(self) -> int | None:
        return agent_pid(self.spool_path)

    def stop_agents(self) -> None:
        stop_agent(self.spool_path)


def agent_pid(spool_path: Path) -> int | None:
    """The pid the agent of this spool published (None: no spool yet, or no agent)."""
    if not spool_path.exists():
        return None
    with Spool(spool_path) as spool:
        pid = spool.meta_get("agent.pid")
    return int(pid) if pid else None


def stop_agent(spool_path: Path) -> None:
    """SIGTERM the agent of this spool (if any) and wait until the lock is free. An agent whose rows
    cannot be delivered never idles out: a test that leaves one behind leaves it running."""
    from oneiric_session.wakeup import agent_holds_lock

    deadline = time.monotonic() + WAIT_SECONDS
    while agent_holds_lock(spool_path) and time.monotonic() < deadline:
        pid = agent_pid(spool_path)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(_POLL_SECONDS)  # sleep-ok: bounded wait for a real process to exit


def _told(agent: subprocess.Popen[str], log: Path) -> str:
    """What an agent printed and logged, for a failure message (bounded)."""
    err = agent.stderr.read() if agent.stderr is not None and agent.poll() is not None else ""
    logged = log.read_text(errors="replace") if log.exists() else "(no log)"
    return f"\n--- its stderr:\n{err[-4000:]}\n--- its log {log}:\n{logged[-4000:]}"


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = WAIT_SECONDS,
    what: str = "condition",
    poll: float = _POLL_SECONDS,
) -> Any:
    """Poll `predicate` until it is truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)  # sleep-ok: bounded polling of real processes


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")
