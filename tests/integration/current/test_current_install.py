"""One pip command beside the current releases, no overlay (issue 10, point 2), on Python 3.14.

Each environment is built fresh, exactly as a user would: a venv, then one
`pip install <release> <our wheel>` (the wheel built once from this checkout, no overlay).
Then `oneiric-session check` passes (the default destination: the bundled server) and
Oneiric's CLI, shell, resolver and plugin loader still import and run. Both builds run in
parallel; pip's cache (kept in the sid root) makes a warm run take ~1 minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, _unavailable
from tests.integration.test_real_session_buddy_transport import isolated_env, processes_under

PIP_SECONDS = 1200
RELEASES = {"oneiric": "oneiric==0.33.3", "session-buddy": "session-buddy==0.36.0"}
# Oneiric's command line, shell, resolver and plugin loader, as Oneiric's CLI boots them.
ONEIRIC_IMPORTS = """
import oneiric, oneiric.cli, oneiric.plugins
from oneiric.core.config import load_settings, resolver_settings_from_config
from oneiric.core.resolution import Resolver
from oneiric.shell import AdminShell, OneiricShell
from oneiric.shell.session_tracker import SessionEventEmitter
resolver = Resolver(settings=resolver_settings_from_config(load_settings()))
print("ok")
"""


@dataclass
class Built:
    venv: Path
    log: Path
    process: subprocess.Popen[bytes]

    def wait(self) -> Path:
        returncode = self.process.wait(timeout=PIP_SECONDS)
        assert returncode == 0, f"{self.process.args} failed:\n{self.log.read_text(errors='replace')[-4000:]}"
        return self.venv


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    python = shutil.which("python3.14")
    if python is None:
        _unavailable("no python3.14 on PATH: run inside the sid root (scripts/in-sid.sh)")
    root = tmp_path_factory.mktemp("one-command")
    wheels = root / "wheel"
    subprocess.run(
        [
            sys.executable,  # Debian's python3.14 has no pip module; a venv's has
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            wheels,
            REPO,
        ],
        check=True,
        timeout=PIP_SECONDS,
    )
    (wheel,) = wheels.glob("oneiric_session-*.whl")
    built = {}
    for name, release in RELEASES.items():
        venv = root / name
        log = root / f"{name}.log"
        # The command a user runs: a venv, then exactly one pip install.
        script = 'set -e; "$1" -m venv "$2"; "$2/bin/pip" install --disable-pip-version-check "$3" "$4"'
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["/bin/sh", "-c", script, "sh", python, str(venv), release, str(wheel)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")},
            )
        built[name] = Built(venv, log, process)
    yield built
    for one in built.values():
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait()


def installed(venv: Path) -> dict[str, str]:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {row["name"].lower(): row["version"] for row in json.loads(proc.stdout)}


def assert_check_passes(venv: Path, root: Path) -> None:
    root.mkdir()
    proc = subprocess.run(
        [str(venv / "bin" / "oneiric-session"), "check", "--json", "--timeout", "60"],
        env=isolated_env(root),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["end_status"] == "ended", report
    assert not processes_under(root)


def assert_oneiric_runs(venv: Path, root: Path) -> None:
    root.mkdir()
    env = isolated_env(root)
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", ONEIRIC_IMPORTS],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    # Oneiric 0.33.3 logs its settings source chain on stdout first.
    assert (imported.returncode, imported.stdout.splitlines()[-1:]) == (0, ["ok"]), imported.stderr[-3000:]
    cli = subprocess.run(
        [str(venv / "bin" / "oneiric"), "--help"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "shell" in cli.stdout


@pytest.mark.parametrize("release", list(RELEASES))
def test_one_pip_command_beside_the_current_release_then_check_passes(
    builds: dict[str, Built], release: str, tmp_path: Path
) -> None:
    venv = builds[release].wait()
    versions = installed(venv)
    name, version = RELEASES[release].split("==")
    assert versions[name] == version
    assert "oneiric-session" in versions
    assert versions["mcp"].startswith("2."), versions["mcp"]  # the tree's own mcp, no overlay

    assert_check_passes(venv, tmp_path / "check")
    if "oneiric" in versions:  # Session-Buddy 0.36.0's tree has Oneiric too
        assert_oneiric_runs(venv, tmp_path / "oneiric")
