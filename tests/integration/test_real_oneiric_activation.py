"""Tracking turned on in real Oneiric's own shells by configuration, or by one call (issue 10, point 3).

`oneiric shell` is Oneiric's real CLI command, configured by settings files only:
settings/oneiric.yaml turns Oneiric's entry points on and selects `session-buddy`, and
settings/adapters.yml lets the agent exit soon after (so the test leaves nothing running).
The environment only isolates the user (HOME, XDG directories). The command runs
`OneiricShell(config).start()` inside `asyncio.run`; fed one line that sleeps, the session
must be recorded at the bundled server with a start before that line and a duration that
covers it, and the process must exit promptly once its input ends.

`run_oneiric_shell_command(python, root)` is the whole body: other Oneiric releases and
interpreters reuse it with their own `python` (an environment with Oneiric and us installed).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_real_oneiric_resolver import clean_env
from tests.support.delivery import WAIT_SECONDS, wait_until

SLEEP_SECONDS = 3.0
# The line the shell runs: it prints when it begins and ends (UTC, the server's clock format).
SLEEP_LINE = (
    "import datetime as _d, time as _t; _n = lambda: _d.datetime.now(_d.timezone.utc).isoformat(); "
    f"print('LINE-BEGIN', _n()); _t.sleep({SLEEP_SECONDS}); print('LINE-END', _n())"
)
# From the end of that line to the process being gone: the REPL sees EOF, Oneiric's atexit
# hook hands the end to its thread, ours waits for it (exit_wait_seconds, 2 s at most), and
# the interpreter tears down. A hang (a start task left on the loop) meets WAIT_SECONDS instead.
PROMPT_EXIT_SECONDS = 10.0


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class ShellResult:
    stdout: str
    stderr: str
    line_begin: datetime
    line_end: datetime
    after_input_seconds: float  # from the end of the sleeping line to the process being gone


def oneiric_project(root: Path, *, oneiric_yaml: dict[str, Any], adapters_yml: dict[str, Any] | None) -> Path:
    """A project directory with Oneiric's settings file and (optionally) ours."""
    settings = root / "settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "oneiric.yaml").write_text(yaml.safe_dump(oneiric_yaml, sort_keys=False))
    if adapters_yml is not None:
        (settings / "adapters.yml").write_text(yaml.safe_dump(adapters_yml, sort_keys=False))
    return root


TRACKING_ON = {
    "plugins": {"entry_points": ["oneiric.adapters"]},
    "adapters": {"selections": {"session_tracker": "session-buddy"}},
}
# Our own settings file: only so the per-user agent exits soon after the test.
AGENT_EXITS_SOON = {"adapters": {"provider_settings": {"session-buddy": {"agent": {"idle_exit_seconds": 2}}}}}


def run_shell(argv: list[str], root: Path, env: dict[str, str], stdin: str) -> ShellResult:
    """Run a shell command on piped stdin; the times its sleeping line printed and the exit delay."""
    proc = subprocess.Popen(
        argv,
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=WAIT_SECONDS)
    finally:
        proc.kill()
    gone = time.monotonic()
    assert proc.returncode == 0, f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    begin = [line.split()[-1] for line in stdout.splitlines() if "LINE-BEGIN" in line]
    end = [line.split()[-1] for line in stdout.splitlines() if "LINE-END" in line]
    assert len(begin) == 1 and len(end) == 1, stdout[-3000:]
    line_end = _utc(end[0])
    # Wall clock to monotonic: the line's end, seen from this process, `now - line_end` ago.
    after = (gone - time.monotonic()) + (datetime.now(line_end.tzinfo) - line_end).total_seconds()
    return ShellResult(stdout, stderr, _utc(begin[0]), line_end, after)


def server_sessions(python: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The bundled server's sessions (its default database, under the test's XDG_DATA_HOME)."""
    db = Path(env["XDG_DATA_HOME"]) / "oneiric-session" / "sessions.sqlite3"
    if not db.exists():
        return []
    proc = subprocess.run(
        [str(python), "-m", "oneiric_session", "sessions", "--db", str(db), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def delivered(python: Path, env: dict[str, str]) -> dict[str, Any]:
    """Wait (bounded) for the agent to deliver a start and its end; the one session recorded."""

    def ended() -> list[dict[str, Any]]:
        sessions = server_sessions(python, env)
        return sessions if sessions and all(s["status"] == "ended" for s in sessions) else []

    sessions = wait_until(ended, what="the shell's session and its end at the bundled server")
    assert len(sessions) == 1, sessions
    return sessions[0]


def assert_session_spans_the_line(session: dict[str, Any], run: ShellResult) -> None:
    assert session["status"] == "ended"
    assert _utc(session["started_at"]) <= run.line_begin, (session, run.line_begin)
    assert _utc(session["ended_at"]) >= run.line_end, (session, run.line_end)
    assert session["duration_seconds"] >= SLEEP_SECONDS, session


def run_oneiric_shell_command(python: Path, tmp_path: Path) -> tuple[dict[str, Any], ShellResult]:
    """The real `oneiric shell`, tracking on by settings files: the session recorded, spanning the line."""
    root = oneiric_project(tmp_path / "project", oneiric_yaml=TRACKING_ON, adapters_yml=AGENT_EXITS_SOON)
    env = clean_env(tmp_path)
    run = run_shell([str(python.parent / "oneiric"), "shell"], root, env, SLEEP_LINE + "\n")

    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.after_input_seconds < PROMPT_EXIT_SECONDS, run.after_input_seconds
    session = delivered(python, env)
    assert (session["component_name"], session["shell_type"]) == ("oneiric", "OneiricShell")
    assert session["exit_reason"] == "user_exit"
    assert_session_spans_the_line(session, run)
    return session, run


@pytest.fixture(params=["0.17.0"])
def oneiric_env(request: pytest.FixtureRequest) -> Path:
    """The Python of an environment holding a real Oneiric and oneiric-session (one per release)."""
    fixture = {"0.17.0": "oneiric_python"}[request.param]
    return Path(request.getfixturevalue(fixture))


def test_oneiric_shell_command_records_a_real_session_by_settings_alone(
    oneiric_env: Path, tmp_path: Path
) -> None:
    session, run = run_oneiric_shell_command(oneiric_env, tmp_path)
    print(
        f"session {session['session_id']}: duration {session['duration_seconds']} s for a "
        f"{SLEEP_SECONDS:g} s line; process gone {run.after_input_seconds:.2f} s after the line ended"
    )


# A host's own AdminShell subclass, shaped like Mahavishnu 0.36.0's MahavishnuShell (its own
# namespace, banner and magics, an app with adapters), started from a plain script that makes
# the one explicit call. argv: "running_loop" (start() inside asyncio.run, as `oneiric shell`
# does) or "asyncio_run" (start() called plainly).
MAHAVISHNU_LIKE = textwrap.dedent(
    """
    import asyncio, sys

    from oneiric.shell import AdminShell, ShellConfig

    import oneiric_session


    class App:
        adapters = {"prefect": object(), "llamaindex": object()}


    class MahavishnuShell(AdminShell):
        def __init__(self, app, config=None):
            super().__init__(app, config)
            self.namespace.update({"ps": lambda: [], "top": lambda: []})

        def _get_component_name(self):
            return "mahavishnu"

        def _get_component_version(self):
            return "0.36.0"

        def _get_adapters_info(self):
            return list(self.app.adapters)

        def _get_banner(self):
            return "Mahavishnu Admin Shell\\nActive Adapters: " + ", ".join(self.app.adapters)


    activated = [oneiric_session.activate_oneiric(), oneiric_session.activate_oneiric()]
    print("ACTIVATED", activated, flush=True)
    shell = MahavishnuShell(App(), ShellConfig())
    if sys.argv[1] == "running_loop":
        async def main():
            shell.start()
        asyncio.run(main())
    else:
        shell.start()
    print("TRACKER", type(shell.session_tracker).__module__, flush=True)
    """
)


@pytest.mark.parametrize("loop", ["running_loop", "asyncio_run"])
def test_a_mahavishnu_like_subclass_is_tracked_after_the_explicit_call(
    oneiric_python: Path, tmp_path: Path, loop: str
) -> None:
    ours = {"adapters": {"selections": {"session_tracker": "session-buddy"}, **AGENT_EXITS_SOON["adapters"]}}
    root = oneiric_project(tmp_path / "project", oneiric_yaml={}, adapters_yml=ours)
    env = clean_env(tmp_path)
    run = run_shell([str(oneiric_python), "-c", MAHAVISHNU_LIKE, loop], root, env, SLEEP_LINE + "\n")

    assert "ACTIVATED [True, True]" in run.stdout
    assert "TRACKER oneiric_session.shell.emitter" in run.stdout
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.after_input_seconds < PROMPT_EXIT_SECONDS, run.after_input_seconds
    session = delivered(oneiric_python, env)
    assert (session["component_name"], session["shell_type"]) == ("mahavishnu", "MahavishnuShell")
    assert_session_spans_the_line(session, run)


NOOP = {"selections": {"session_tracker": "noop"}}


# What Oneiric does on its own, observed from inside: which method start() called and which
# emitter it used. Oneiric's own emitter cannot reach a server here (SESSION_BUDDY_PATH points
# nowhere); what matters is that it is Oneiric's, unpatched.
OBSERVE = textwrap.dedent(
    """
    import asyncio, sys

    from oneiric import plugins
    from oneiric.core.config import load_settings, resolver_settings_from_config
    from oneiric.core.resolution import Resolver

    settings = load_settings()
    resolver = Resolver(settings=resolver_settings_from_config(settings))
    plugins.register_entrypoint_plugins(resolver, settings.plugins)
    import oneiric_session

    explicit = oneiric_session.activate_oneiric() if sys.argv[1] == "explicit" else None
    from oneiric.shell import AdminShell, OneiricShell

    method = AdminShell._notify_session_start_async
    shell = OneiricShell(settings)
    shell.start()
    print("OBSERVED", method.__module__, type(shell.session_tracker).__module__, explicit, flush=True)
    """
)


@pytest.mark.parametrize(
    ("oneiric_yaml", "how"),
    [
        pytest.param({}, "loader", id="plugin-off"),
        pytest.param(
            {**TRACKING_ON, "adapters": {"selections": {"session_tracker": "noop"}}}, "loader", id="noop"
        ),
        pytest.param(
            {"adapters": {"selections": {"session_tracker": "noop"}}}, "explicit", id="noop-explicit"
        ),
    ],
)
def test_noop_or_plugin_off_leaves_oneiric_as_it_is(
    oneiric_python: Path, tmp_path: Path, oneiric_yaml: dict[str, Any], how: str
) -> None:
    root = oneiric_project(tmp_path / "project", oneiric_yaml=oneiric_yaml, adapters_yml=None)
    env = clean_env(tmp_path, SESSION_BUDDY_PATH=str(tmp_path / "no-session-buddy-here"))
    proc = subprocess.run(
        [str(oneiric_python), "-c", OBSERVE, how],
        cwd=root,
        env=env,
        input="6*7\n",
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = "None" if how == "loader" else "False"
    assert f"OBSERVED oneiric.shell.core oneiric.shell.session_tracker {expected}" in proc.stdout, proc.stdout
    assert "Out[1]: 42" in proc.stdout
    # Nothing of ours ran: no spool, no server database, no agent.
    state = Path(env["XDG_STATE_HOME"])
    assert not (state / "oneiric-session").exists()
    assert not (Path(env["XDG_DATA_HOME"]) / "oneiric-session").exists()
