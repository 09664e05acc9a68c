"""Tracking turned on in real Oneiric 0.33.3's own shells by configuration, or by one call (Python 3.14).

test_real_oneiric_activation.py's tests for 0.17.0, on 0.33.3, at the bundled server and once at the
real Session-Buddy 0.36.0; and a subclass shaped exactly like Mahavishnu 0.36.0's MahavishnuShell.

Oneiric 0.33.3 reads its settings from the user's `$XDG_CONFIG_HOME/oneiric/config.yaml` (and
`local.yaml`), `$ONEIRIC_CONFIG`, or `settings/` beside its own install, not from the current
directory: so the settings file the 0.17.0 tests write as the project's `settings/oneiric.yaml`
is moved to the user's config file before Oneiric runs (`oneiric_project` below); our own
`settings/adapters.yml` stays in the project directory, where we read it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_real_oneiric_activation as activation
from tests.integration.conftest import ServerLaunch
from tests.integration.test_real_oneiric_resolver import clean_env
from tests.integration.test_real_session_buddy_transport import GENEROUS, LoggedServer, processes_under
from tests.support.delivery import wait_until

original_project = activation.oneiric_project


def oneiric_project(root: Path, *, oneiric_yaml: dict[str, Any], adapters_yml: dict[str, Any] | None) -> Path:
    """activation.oneiric_project, with Oneiric's file where 0.33.3 reads it (the user's config)."""
    original_project(root, oneiric_yaml=oneiric_yaml, adapters_yml=adapters_yml)
    config = Path(clean_env(root.parent)["XDG_CONFIG_HOME"]) / "oneiric"
    config.mkdir(parents=True, exist_ok=True)
    (root / "settings" / "oneiric.yaml").rename(config / "config.yaml")
    return root


@pytest.fixture(autouse=True)
def oneiric_settings_in_the_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(activation, "oneiric_project", oneiric_project)


test_noop_or_plugin_off_leaves_oneiric_as_it_is = activation.test_noop_or_plugin_off_leaves_oneiric_as_it_is


def test_oneiric_shell_command_records_a_real_session_by_settings_alone(
    oneiric_python: Path, tmp_path: Path
) -> None:
    """The real `oneiric shell` of 0.33.3, settings files only, at the bundled server."""
    session, run = activation.run_oneiric_shell_command(oneiric_python, tmp_path)
    print(
        f"session {session['session_id']}: duration {session['duration_seconds']} s for a "
        f"{activation.SLEEP_SECONDS:g} s line; process gone {run.after_input_seconds:.2f} s after its end"
    )


def recorded_calls(stdin_log: Path, tool: str) -> list[dict[str, Any]]:
    """The arguments of every `tools/call` of `tool` the server read on its stdin."""
    calls = []
    for line in stdin_log.read_text(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        params = message.get("params") or {} if isinstance(message, dict) else {}
        if message.get("method") == "tools/call" and params.get("name") == tool:
            calls.append(params.get("arguments") or {})
    return calls


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_oneiric_shell_command_records_a_real_session_at_session_buddy_0_36_0(
    oneiric_python: Path, session_buddy_launcher: Callable[..., ServerLaunch], tmp_path: Path
) -> None:
    """The same `oneiric shell` run, its settings selecting the real Session-Buddy 0.36.0 over stdio.

    What the real server received is read from a copy of its stdin (tee) and from its own log:
    one start, tracked, stamped before the line; one end of that session, ended, stamped after
    the line, with a duration covering it.
    """
    launch = session_buddy_launcher(tmp_path / "sb-home")
    stdin_log, server_log = tmp_path / "server-stdin.jsonl", tmp_path / "server.log"
    teed = dataclasses.replace(
        launch,
        command="/bin/sh",
        args=[
            "-c",
            'in=$1; log=$2; shift 2; tee -a "$in" | "$@" 2>>"$log"',
            "sh",
            str(stdin_log),
            str(server_log),
            launch.command,
            *launch.args,
        ],
    )
    provider = {
        "server": {"command": teed.command, "args": teed.args, "env": teed.env, "cwd": teed.cwd},
        "agent": {"idle_exit_seconds": 2},
        **GENEROUS,
    }
    ours = {"adapters": {"provider_settings": {"session-buddy": provider}}}
    # The project lies under the server's HOME: the real server accepts only a cwd it has, under it.
    root = oneiric_project(launch.home / "project", oneiric_yaml=activation.TRACKING_ON, adapters_yml=ours)
    env = clean_env(launch.home)
    server = LoggedServer(teed, server_log, root / "settings")

    run = activation.run_shell(
        [str(oneiric_python.parent / "oneiric"), "shell"], root, env, activation.SLEEP_LINE + "\n"
    )
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.after_input_seconds < activation.PROMPT_EXIT_SECONDS, run.after_input_seconds

    (session_id,) = wait_until(
        lambda: server.starts("oneiric", "tracked"), what="the start at the real server"
    )
    wait_until(lambda: server.ends(session_id), what="its end at the real server")
    (start,) = recorded_calls(stdin_log, "track_session_start")
    (end,) = recorded_calls(stdin_log, "track_session_end")
    assert (start["component_name"], start["shell_type"]) == ("oneiric", "OneiricShell")
    assert end["session_id"] == session_id
    assert re.fullmatch(r"oneiric-\d{8}-\d{6}", session_id)
    assert _utc(start["timestamp"]) <= run.line_begin, (start["timestamp"], run.line_begin)
    assert _utc(end["timestamp"]) >= run.line_end, (end["timestamp"], run.line_end)
    assert end["metadata"]["exit_reason"] == "user_exit"
    assert end["metadata"]["duration_seconds"] >= activation.SLEEP_SECONDS, end
    assert len(server.lines("Session (start|end) tracked: ")) == 2
    wait_until(lambda: not processes_under(launch.home), what="the agent and the server to exit")


# Mahavishnu 0.36.0's MahavishnuShell (mahavishnu/shell/adapter.py in its wheel), as it is: it
# adds namespace helpers and IPython magics, a banner naming the app's adapters, and no
# component name (Oneiric's default, None, reported as "unknown"). Its CLI starts it the way
# `mahavishnu shell` does: `asyncio.run(_shell())`, `_shell` building the shell and calling
# start(). Only the app and the magics' bodies are stand-ins (the real ones need Mahavishnu's
# backends); the script makes the one explicit activation call first.
MAHAVISHNU_0_36_0 = textwrap.dedent(
    """
    import asyncio

    from IPython.core.magic import Magics, line_magic, magics_class
    from oneiric.shell import AdminShell, ShellConfig

    import oneiric_session


    class MahavishnuApp:
        def __init__(self):
            self.config = type("Config", (), {"shell_enabled": True})()
            self.adapters = {"prefect": object(), "llamaindex": object(), "agno": object()}


    async def ps(app):
        return []


    @magics_class
    class MahavishnuMagics(Magics):
        def __init__(self, shell):
            super().__init__(shell)
            self.app = None

        def set_app(self, app):
            self.app = app

        @line_magic
        def repos(self, line):
            print("REPOS", sorted(self.app.adapters))


    class MahavishnuShell(AdminShell):
        def __init__(self, app, config: ShellConfig | None = None) -> None:
            super().__init__(app, config)
            self._add_mahavishnu_namespace()

        def _add_mahavishnu_namespace(self) -> None:
            self.namespace.update({"MahavishnuApp": MahavishnuApp, "ps": lambda: asyncio.run(ps(self.app))})

        def _register_magics(self) -> None:
            super()._register_magics()
            if self.shell is None:
                raise RuntimeError("InteractiveShellEmbed was not initialized by start()")
            magics = MahavishnuMagics(self.shell)
            magics.set_app(self.app)
            self.shell.register_magics(magics)

        def _get_banner(self) -> str:
            return "Mahavishnu Admin Shell\\nActive Adapters: " + ", ".join(self.app.adapters.keys())


    print("ACTIVATED", oneiric_session.activate_oneiric(), oneiric_session.activate_oneiric(), flush=True)

    async def _shell():
        shell = MahavishnuShell(MahavishnuApp())
        shell.start()
        print("TRACKER", type(shell.session_tracker).__module__, flush=True)

    asyncio.run(_shell())
    """
)


def test_mahavishnu_0_36_0_shell_is_tracked_after_the_explicit_call(
    oneiric_python: Path, tmp_path: Path
) -> None:
    ours = {
        "adapters": {
            "selections": {"session_tracker": "session-buddy"},
            **activation.AGENT_EXITS_SOON["adapters"],
        }
    }
    root = oneiric_project(tmp_path / "project", oneiric_yaml={}, adapters_yml=ours)
    env = clean_env(tmp_path)
    stdin = "%repos\n" + activation.SLEEP_LINE + "\n"
    run = activation.run_shell([str(oneiric_python), "-c", MAHAVISHNU_0_36_0], root, env, stdin)

    assert "ACTIVATED True True" in run.stdout
    assert "REPOS ['agno', 'llamaindex', 'prefect']" in run.stdout  # its magics were registered
    assert "TRACKER oneiric_session.shell.emitter" in run.stdout
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.after_input_seconds < activation.PROMPT_EXIT_SECONDS, run.after_input_seconds
    session = activation.delivered(oneiric_python, env)
    assert (session["component_name"], session["shell_type"]) == ("unknown", "MahavishnuShell")
    activation.assert_session_spans_the_line(session, run)
