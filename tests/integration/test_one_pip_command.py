"""`pip install oneiric==0.17.0 oneiric-session` in a fresh Python 3.13 venv, as a user types it (issue 10).

Oneiric 0.17.0's tree pins mcp<2 (dhara -> fastmcp 3.x); oneiric-session runs on mcp 1.x
and 2.x, so the one command resolves (to mcp 1.30 today) with no overlay or constraints.
The venv is built once per test session from a wheel of this checkout, with exactly that
command and nothing before it; pip's own cache is the only thing reused. Then `check`
(the bundled server over stdio), `serve --http`, the agent's delivery from Oneiric's own
`oneiric shell`, and Oneiric's CLI, resolver and plugin loader are run there.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, _unavailable
from tests.integration.test_real_oneiric_activation import run_oneiric_shell_command
from tests.integration.test_real_oneiric_resolver import clean_env

pytestmark = pytest.mark.real_oneiric

# Resolving and downloading ~110 packages; pip's cache makes later runs a few minutes at most.
INSTALL_SECONDS = 1200
RUN_SECONDS = 120


def serve_argv(python: Path) -> list[str]:
    return [str(python), "-m", "oneiric_session", "serve"]


LISTENING = re.compile(r"listening on (http://\S+/mcp)")


def python313() -> str | None:
    candidates = [os.environ.get("ONEIRIC_SESSION_PYTHON313", ""), "python3.13"]
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.13.*/bin/python"))
    for candidate in filter(None, candidates):
        path = shutil.which(candidate)
        if path is None:
            continue
        probe = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"], capture_output=True
        )
        if probe.stdout.strip() == b"True":
            return path
    return None


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv where the only install step was `pip install oneiric==0.17.0 <our wheel>`."""
    if not (REPO / "oneiric_session" / "__init__.py").is_file():  # never in a checkout, so never in CI
        pytest.skip("the wheel is built from the checkout, and this copy of the tests has no package source")
    interpreter = python313()
    if interpreter is None:
        _unavailable("Python 3.13 not found (set ONEIRIC_SESSION_PYTHON313)")
    base = tmp_path_factory.mktemp("one-pip-command")
    wheels = base / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("oneiric_session-*.whl")
    venv = base / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, timeout=RUN_SECONDS)
    python = venv / "bin" / "python"
    # The one command. No -c, no overlay: what a user runs.
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "oneiric==0.17.0", str(wheel)],
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "ResolutionImpossible" not in install.stderr
    yield python
    shutil.rmtree(base, ignore_errors=True)


def run(python: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_SECONDS
    )


def versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d: m.version(d) for d in ('oneiric', 'oneiric-session', 'mcp', 'fastmcp')}))"
    )
    return json.loads(subprocess.check_output([str(python), "-c", code], text=True, timeout=RUN_SECONDS))


def test_the_one_command_resolves_beside_oneirics_mcp_1x(fresh_venv: Path, tmp_path: Path) -> None:
    found = versions(fresh_venv)
    assert found["oneiric"] == "0.17.0"
    assert found["oneiric-session"] == "0.1.0"
    assert found["mcp"].startswith("1."), found  # Oneiric's tree keeps its mcp 1.x
    checked = run(fresh_venv, "-m", "pip", "check", env=clean_env(tmp_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_check_reaches_the_bundled_server(fresh_venv: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    proc = run(fresh_venv.parent / "oneiric-session", "check", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is True and answer["end_status"] == "ended", answer
    assert answer["destination"].startswith(f"{fresh_venv} -m oneiric_session serve")


def test_serve_http_and_check_over_http(fresh_venv: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    server = subprocess.Popen(
        [*serve_argv(fresh_venv), "--db", str(tmp_path / "http.sqlite3"), "--http", "127.0.0.1:0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        match = LISTENING.search(server.stderr.readline())
        assert match, server.stderr.read()
        http_env = {**env, "ONEIRIC_SESSION_TRANSPORT": "http", "ONEIRIC_SESSION_URL": match.group(1)}
        proc = run(fresh_venv, "-m", "oneiric_session", "check", "--json", env=http_env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["ok"] is True
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=RUN_SECONDS)
        assert server.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        server.kill()
        server.communicate()


def test_oneirics_cli_resolver_and_plugin_loader_still_run(fresh_venv: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path, ONEIRIC_PLUGINS__AUTO_LOAD="true")
    oneiric = fresh_venv.parent / "oneiric"
    plugins = run(oneiric, "plugins", env=env, cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stdout + plugins.stderr
    assert "oneiric-session" in plugins.stdout
    explained = run(oneiric, "explain", "session_tracker", env=env, cwd=tmp_path)
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "session-buddy" in explained.stdout
    imported = run(
        fresh_venv,
        "-c",
        "import oneiric.shell, oneiric.shell.session_tracker, oneiric.plugins, oneiric.core.resolution",
        env=env,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr


def test_oneiric_shell_delivers_through_the_agent(fresh_venv: Path, tmp_path: Path) -> None:
    """Oneiric's own `oneiric shell`, tracking on by settings: the agent delivers on mcp 1.x."""
    session, _ = run_oneiric_shell_command(fresh_venv, tmp_path)
    assert session["component_name"] == "oneiric"
