"""Our transport, `check` and spool replay against the real Session-Buddy 0.23.0 over stdio.

What the server did is read from its own log: every server here runs with stderr appended
to a file, where 0.23.0 logs one line per tool call it handled
("Session start tracked: session_id=..., status=..." / "Session end tracked: ...").
That is how calls are counted on the server side: we found nothing else to read them back
from (its DuckDB cannot be opened offline, since replaying its WAL wants a downloaded
extension; an end writes a handoff file named only by the second, and ends are not stored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio

from oneiric_session.agent.resilience import RetryPolicy
from oneiric_session.config import load_config
from oneiric_session.errors import AuthenticationError, RejectedError
from oneiric_session.tracking.events import build_end_event, build_start_event
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport import SessionBuddyClient
from oneiric_session.transport.answers import USER_ID_DEFECT_EXPLAINED
from tests.integration.conftest import ServerLaunch, write_settings
from tests.support.delivery import Scene, wait_until

CLI = [sys.executable, "-m", "oneiric_session"]
SECRET = "transport-test-secret-" + "t" * 32
# The first call on a fresh server sets up its database (5-9 s, more on a loaded machine).
GENEROUS = {
    "timeouts": {"connect_seconds": 90, "call_seconds": 90},
    "retry": {"attempts": 3, "wait_min_seconds": 0.01, "wait_max_seconds": 0.05},
}
SUBPROCESS_SECONDS = 180
LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class LoggedServer:
    """A real server's launch line whose stderr goes to `log`, and the settings that select it."""

    launch: ServerLaunch
    log: Path
    settings_dir: Path

    def lines(self, pattern: str) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if re.search(pattern, line)]

    def starts(self, component: str, status: str = r"\w+") -> list[str]:
        """Session ids of the starts of `component` the server handled with `status`."""
        pattern = rf"Session start tracked: session_id=(\S+), component={component}, .* status={status}$"
        return [re.search(pattern, line)[1] for line in self.lines(pattern)]  # type: ignore[index]

    def ends(self, session_id: str) -> list[str]:
        return self.lines(rf"Session end tracked: session_id={re.escape(session_id)}, status=ended$")


def logged_server(
    launcher: Callable[..., ServerLaunch], root: Path, extra_env: dict[str, str] | None = None
) -> LoggedServer:
    """The real server (HOME in root/sb-home) behind `sh`, which appends its stderr to root/server.log."""
    launch = launcher(root / "sb-home", extra_env)
    log = root / "server.log"
    wrapped = dataclasses.replace(
        launch,
        command="/bin/sh",
        args=["-c", 'log=$1; shift; exec "$@" 2>>"$log"', "sh", str(log), launch.command, *launch.args],
    )
    settings_dir = root / "settings"
    write_settings(settings_dir, wrapped, GENEROUS)
    return LoggedServer(wrapped, log, settings_dir)


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment whose HOME and XDG dirs are all under root."""
    run = root / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "XDG_STATE_HOME": str(root / "state"),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_RUNTIME_DIR": str(run),
        **extra,
    }


def processes_under(root: Path) -> list[str]:
    """Live processes whose command line or environment mentions root (servers, agents, CLIs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone meanwhile, or not ours
            continue
        if str(root) in cmdline + environ and state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def valid_token() -> str:
    """A JWT 0.23.0 accepts (CONTRACT.md, Authentication)."""
    now = int(time.time())
    claims = {
        "iss": "session-buddy",
        "sub": "transport-test",
        "aud": "session-buddy",
        "iat": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
        "scopes": ["read"],
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


CHECK_TOKEN = valid_token()


def start_event(component: str, cwd: Path) -> dict[str, Any]:
    # report_cwd: the server checks the cwd exists on its host and writes <cwd>/.claude there.
    return build_start_event(
        component_name=component,
        shell_type="TransportTest",
        metadata={"n": 1},
        limits=LIMITS,
        report_cwd=str(cwd),
    )


def end_event(session_id: str) -> dict[str, Any]:
    return build_end_event(
        session_id=session_id, exit_reason="user_exit", duration_seconds=1.5, metadata=None, limits=LIMITS
    )


class Records(logging.Handler):
    """Every log record of the module's run: DEBUG from us and mcp, WARNING and up from everyone."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclasses.dataclass
class Shared:
    """One client, its retry policy, and one real server for the module's transport tests."""

    client: SessionBuddyClient
    policy: RetryPolicy
    server: LoggedServer
    records: Records
    sleeps: list[float]


@pytest.fixture(scope="module")
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in ("oneiric_session", "mcp")]
    levels = [logger.level for logger in loggers]
    root.addHandler(handler)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@dataclasses.dataclass
class CheckRun:
    """`oneiric-session check` running in the background against its own real server."""

    root: Path
    server: LoggedServer
    process: subprocess.Popen[str]

    def result(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=SUBPROCESS_SECONDS)
        return self.process.returncode, out, err


@pytest.fixture(scope="module")
def check_runs(
    session_buddy_launcher: Callable[..., ServerLaunch], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, CheckRun]]:
    """Both `check` runs, started together: a real server's first call mostly waits (on an offline
    DuckDB extension download), so overlapping the module's servers keeps it under a minute."""

    def start(name: str, extra_env: dict[str, str] | None, *args: str, **env: str) -> CheckRun:
        root = tmp_path_factory.mktemp(name)
        server = logged_server(session_buddy_launcher, root, extra_env)
        # cwd: the check's start reports it, and the real server must have it (it is under tmp).
        process = subprocess.Popen(
            [*CLI, "--settings", str(server.settings_dir), "check", "--timeout", "120", *args],
            env=isolated_env(root, **env),
            cwd=server.launch.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return CheckRun(root, server, process)

    runs = {
        "delivers": start("check-delivers", None, "--json"),
        "auth-defect": start("check-auth", {"SESSION_BUDDY_SECRET": SECRET}, SESSION_BUDDY_TOKEN=CHECK_TOKEN),
    }
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.communicate()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    session_buddy_launcher: Callable[..., ServerLaunch],
    tmp_path_factory: pytest.TempPathFactory,
    records: Records,
    check_runs: dict[str, CheckRun],  # started first, to overlap (see check_runs)
) -> AsyncIterator[Shared]:
    server = logged_server(session_buddy_launcher, tmp_path_factory.mktemp("shared"))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:  # records retry waits instead of waiting
        sleeps.append(seconds)

    destination = load_config(server.settings_dir).destination()
    client = SessionBuddyClient(destination)
    yield Shared(client, RetryPolicy(destination.tuning, sleep=sleep), server, records, sleeps)
    await client.aclose()
    assert not processes_under(server.launch.home), "the server outlived aclose()"


@pytest.mark.asyncio(loop_scope="module")
async def test_start_and_end_are_accepted_over_one_session_despite_the_stdout_noise(shared: Shared) -> None:
    client, home = shared.client, shared.server.launch.home
    session_id = await client.start_session(start_event("real-transport", home))
    assert re.fullmatch(r"real-transport-\d{8}-\d{6}", session_id)
    server_pid = client.server_pid
    assert await client.end_session(end_event(session_id)) == "ended"
    assert client.connected and client.server_pid == server_pid  # the same session and process

    assert shared.server.starts("real-transport", "tracked") == [session_id]
    assert len(shared.server.ends(session_id)) == 1
    assert len(shared.server.lines("Applied SESSION_BUDDY_TOOL_PROFILE")) == 1  # one server launch
    skipped = [r for r in shared.records.records if r.getMessage().startswith("skipped non-JSON-RPC line")]
    assert len(skipped) >= 10, "0.23.0 prints ~16 lines on stdout before JSON-RPC"
    assert all(r.levelno == logging.DEBUG for r in skipped)
    loud = [f"{r.name}: {r.getMessage()}" for r in shared.records.records if r.levelno >= logging.WARNING]
    assert loud == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_refused_event_is_permanent_and_sent_exactly_once(shared: Shared) -> None:
    client, home = shared.client, shared.server.launch.home
    assert shared.policy.tuning.attempts == 3  # a transient error would be retried
    shared.sleeps.clear()
    with pytest.raises(RejectedError) as refused:
        await shared.policy.call(
            lambda: client.start_session(start_event("real-refused", home / "not-there"))
        )
    assert not isinstance(refused.value, AuthenticationError)
    assert refused.value.permanent
    assert "Path does not exist" in str(refused.value)
    assert shared.sleeps == []  # no retry wait

    # A later call on the same session succeeds: the server had answered everything before it,
    # and its log shows the refused event arrived exactly once.
    server_pid = client.server_pid
    session_id = await client.start_session(start_event("real-after-refusal", home))
    assert client.server_pid == server_pid
    assert shared.server.starts("real-after-refusal", "tracked") == [session_id]
    assert shared.server.starts("real-refused") == ["None"]
    assert shared.server.lines("Session start failed: Path does not exist: .*component=real-refused")
    assert shared.policy.breaker.state == "closed"


@pytest.mark.asyncio(loop_scope="module")
async def test_auth_on_no_token_and_the_0_23_0_valid_token_defect_are_permanent(
    session_buddy_launcher: Callable[..., ServerLaunch], tmp_path: Path
) -> None:
    server = logged_server(session_buddy_launcher, tmp_path, {"SESSION_BUDDY_SECRET": SECRET})
    token: list[str | None] = [None]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    destination = load_config(server.settings_dir).destination()
    policy = RetryPolicy(destination.tuning, sleep=sleep)
    async with SessionBuddyClient(destination, token=lambda: token[0]) as client:
        with pytest.raises(AuthenticationError) as missing:
            await policy.call(lambda: client.start_session(start_event("real-auth", server.launch.home)))
        assert "Authentication failed: Token required" in str(missing.value)

        token[0] = valid_token()
        with pytest.raises(AuthenticationError) as defect:
            await policy.call(lambda: client.start_session(start_event("real-auth", server.launch.home)))
    assert defect.value.permanent
    message = str(defect.value)
    assert message.startswith(f"track_session_start: {USER_ID_DEFECT_EXPLAINED} (server said: ")
    assert "unexpected keyword argument 'user_id'" in message
    assert token[0] not in message
    assert sleeps == []  # neither was retried
    assert server.starts("real-auth") == []  # the tool body never ran


def test_check_json_delivers_to_the_real_server(check_runs: dict[str, CheckRun]) -> None:
    run = check_runs["delivers"]
    returncode, out, err = run.result()
    assert returncode == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert re.fullmatch(r"oneiric-session-check-\d{8}-\d{6}", report["session_id"])
    assert report["end_status"] == "ended"
    assert run.server.starts("oneiric-session-check", "tracked") == [report["session_id"]]
    assert len(run.server.ends(report["session_id"])) == 1
    assert not processes_under(run.root)


def test_check_explains_the_0_23_0_auth_defect(check_runs: dict[str, CheckRun]) -> None:
    run = check_runs["auth-defect"]
    returncode, out, err = run.result()
    assert (returncode, out) == (1, "")
    explained = f"track_session_start: {USER_ID_DEFECT_EXPLAINED} (server said: "
    assert err.startswith(f"not delivered: authentication_failed: {explained}")
    assert CHECK_TOKEN not in err and SECRET not in err
    assert not processes_under(run.root)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    """F's isolated user (tests/support/delivery.py), its server chosen by settings/adapters.yml alone."""
    scene = Scene(tmp_path)
    for name in ("SERVER__COMMAND", "SERVER__ARGS"):  # Scene's bundled-server overrides
        del scene.env[f"ONEIRIC_SESSION_{name}"]
    yield scene
    scene.stop_agents()
    wait_until(lambda: not processes_under(tmp_path), what="no agent or server left running")


def test_four_sessions_spooled_while_the_server_cannot_start_reach_the_real_server_once(
    scene: Scene, session_buddy_launcher: Callable[..., ServerLaunch]
) -> None:
    """tests/test_spool_cli.py's four-sessions test, against the real 0.23.0 after the settings are fixed."""
    server = logged_server(session_buddy_launcher, scene.root)  # settings dir: the scene's
    assert server.settings_dir == Path(scene.env["ONEIRIC_SESSION_SETTINGS_DIR"])
    broken = dataclasses.replace(server.launch, command=str(scene.root / "no-such-server"), args=[])
    write_settings(server.settings_dir, broken, GENEROUS)
    handles = [h for n in range(4) for h in scene.run_shell(1, component=f"shell{n}")]  # 4 processes
    assert len(set(handles)) == 4

    listing = scene.run("spool", "list", "--json")
    assert listing.returncode == 1, listing.stderr  # 1: events remain
    report = json.loads(listing.stdout)
    assert {r["handle"] for r in report["pending"]} == set(handles)
    assert sorted(r["kind"] for r in report["pending"]) == ["end"] * 4 + ["start"] * 4
    assert report["dead"] == []
    assert not server.log.exists()  # nothing reached a server

    write_settings(server.settings_dir, server.launch, GENEROUS)  # the configuration is fixed
    replay = scene.run("spool", "replay", timeout=SUBPROCESS_SECONDS)
    assert replay.returncode == 0, replay.stderr
    assert "delivered 8 event(s)" in replay.stdout
    # The server's own log: four starts tracked (one per shell), each id ended once, nothing else.
    ids = {n: server.starts(f"shell{n}", "tracked") for n in range(4)}
    assert all(len(found) == 1 for found in ids.values()), ids
    for (session_id,) in ids.values():
        assert len(server.ends(session_id)) == 1
    assert len(server.lines("Session start tracked: ")) == 4
    assert len(server.lines("Session end tracked: ")) == 4
    assert scene.depth() == 0 and scene.dead() == 0

    again = scene.run("spool", "replay", "--json", timeout=SUBPROCESS_SECONDS)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["delivered"] == 0
    assert len(server.lines("Session (start|end) tracked: ")) == 8
