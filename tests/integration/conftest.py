"""Fixtures for the real Session-Buddy 0.23.0 and real Oneiric 0.17.0 (Python 3.13 venvs).

The venvs are built by scripts/real-envs.sh in $ONEIRIC_SESSION_REAL_ENVS (default
~/.cache/oneiric-session/real-envs), one directory per constraints hash. Locally a missing
venv skips the test; in CI (CI=true) it fails it, so the real-system tests cannot vanish.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from oneiric_session.config.loader import SESSION_BUDDY_STDIO_CODE as SB_SERVE

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints"
HOW_TO_BUILD = "run scripts/real-envs.sh (about 2 minutes cold) to build it"


def real_envs_base() -> Path:
    configured = os.environ.get("ONEIRIC_SESSION_REAL_ENVS")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "oneiric-session" / "real-envs"


def env_dir(name: str, *constraint_files: str) -> Path:
    """The venv directory scripts/real-envs.sh builds: <name>-<sha256 of the files, 12 hex>."""
    digest = hashlib.sha256(b"".join((CONSTRAINTS / f).read_bytes() for f in constraint_files))
    return real_envs_base() / f"{name}-{digest.hexdigest()[:12]}"


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{message} (CI=true: real-system tests must run)", pytrace=False)
    pytest.skip(message)


def _stamped_python(venv: Path, stamp: str) -> Path:
    python = venv / "bin" / "python"
    stamp_file = venv / ".real-envs-stamp"
    if not python.exists() or not stamp_file.exists() or stamp_file.read_text().strip() != stamp:
        _unavailable(f"no ready venv at {venv}: {HOW_TO_BUILD}")
    return python


@pytest.fixture(scope="session")
def session_buddy_python() -> Path:
    """Python 3.13 with session-buddy==0.23.0."""
    venv = env_dir("session-buddy-0.23.0", "session-buddy-0.23.0.txt")
    return _stamped_python(venv, venv.name.rsplit("-", 1)[1])


@pytest.fixture(scope="session")
def oneiric_python() -> Path:
    """Python 3.13 with oneiric==0.17.0 and this checkout installed editable."""
    venv = env_dir("oneiric-0.17.0", "oneiric-0.17.0.txt")
    python = _stamped_python(venv, venv.name.rsplit("-", 1)[1])
    project_stamp = venv / ".oneiric-session-stamp"
    installed_from = project_stamp.read_text().split()[0] if project_stamp.exists() else None
    if installed_from != str(REPO):
        _unavailable(f"{venv} has oneiric-session from {installed_from}, not {REPO}: {HOW_TO_BUILD}")
    return python


@dataclass(frozen=True)
class ServerLaunch:
    """How to start one real Session-Buddy over stdio (the stdio client's StdioServerParameters)."""

    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str
    home: Path = field(compare=False)


@pytest.fixture(scope="session")
def session_buddy_launcher(session_buddy_python: Path) -> Callable[..., ServerLaunch]:
    """launch(home, extra_env=None) -> ServerLaunch with HOME and the server's cwd at home.

    HOME is where the server writes (~/.claude, ~/.duckdb); events must carry a cwd under
    it (or under the temp dir), since the server checks the cwd exists on its host.
    """

    def launch(home: Path, extra_env: Mapping[str, str] | None = None) -> ServerLaunch:
        home.mkdir(parents=True, exist_ok=True)
        return ServerLaunch(
            command=str(session_buddy_python),
            args=["-c", SB_SERVE],
            env={"HOME": str(home), **(extra_env or {})},
            cwd=str(home),
            home=home,
        )

    return launch


@pytest.fixture
def session_buddy_server(
    session_buddy_launcher: Callable[..., ServerLaunch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ServerLaunch:
    """The real server's launch line for one test, HOME in tmp_path."""
    # Set, the profile hides the tracking tools; keep it out of anything that inherits our env.
    monkeypatch.delenv("SESSION_BUDDY_TOOL_PROFILE", raising=False)
    return session_buddy_launcher(tmp_path / "sb-home")


def write_settings(settings_dir: Path, launch: ServerLaunch, extra: Mapping[str, Any] | None = None) -> Path:
    """Write settings_dir/adapters.yml selecting session-buddy with launch as its server."""
    provider: dict[str, Any] = {
        "server": {"command": launch.command, "args": launch.args, "env": launch.env, "cwd": launch.cwd},
        **(extra or {}),
    }
    document = {
        "adapters": {
            "selections": {"session_tracker": "session-buddy"},
            "provider_settings": {"session-buddy": provider},
        }
    }
    settings_dir.mkdir(parents=True, exist_ok=True)
    path = settings_dir / "adapters.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def real_settings_writer() -> Callable[..., Path]:
    """write_settings(settings_dir, launch, extra=None) -> path of the adapters.yml written."""
    return write_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark by fixture use, so `-m "not real_session_buddy"` deselects every test that needs one.
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "session_buddy_python" in names:
            item.add_marker(pytest.mark.real_session_buddy)
        # (oneiric_env picks its release's Python through getfixturevalue: named here too)
        if "oneiric_python" in names or "oneiric_env" in names:
            item.add_marker(pytest.mark.real_oneiric)
