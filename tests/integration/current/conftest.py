"""Fixtures for the current releases on Python 3.14: Session-Buddy 0.36.0 and Oneiric 0.33.3.

Debian 12 has no Python 3.14, so scripts/sid-root.sh builds a Debian sid root with it and
scripts/real-envs-current.sh builds the venvs in /opt/real-envs inside it (one directory per
constraints hash, as for 0.23.0/0.17.0). These tests run *inside* that root, on its Python 3.14
(scripts/test does it: scripts/in-sid.sh /opt/real-envs/py314-suite/bin/pytest -m real_current);
every test here carries the real_current marker. Locally a missing environment skips a test; in
CI (CI=true) it fails it, so the real-system tests cannot vanish.

The fixtures here override the 0.23.0/0.17.0 ones of the same names (session_buddy_python,
session_buddy_launcher, oneiric_python; separate definitions, so a mixed run cannot mix up
their cached values), so a test module here runs the old releases' tests unchanged against the
current ones by naming them, e.g. test_current_oneiric_resolver.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from oneiric_session.config.loader import SESSION_BUDDY_STDIO_CODE as SB_SERVE
from tests.integration.conftest import CONSTRAINTS, REPO, ServerLaunch, _unavailable

# Where real-envs-current.sh puts the venvs, as seen inside the sid root.
ENVS = Path(os.environ.get("ONEIRIC_SESSION_SID_ENVS", "/opt/real-envs"))
# 0.23.0 logged one INFO line per tracking call on stderr, and the 0.23.0 tests count the server's
# calls from those lines (test_real_session_buddy_transport.py). 0.36.0 still writes the same
# lines but shows only warnings, so its launch line first sends that one logger, unformatted, to
# stderr, and says it was launched (0.23.0's own "Applied SESSION_BUDDY_TOOL_PROFILE" line is gone);
# the rest is SESSION_BUDDY_STDIO_CODE, the launch line users configure.
LAUNCHED = "oneiric-session-test: server launched"
TRACKING_LOG = (
    f"import logging, sys; print({LAUNCHED!r}, file=sys.stderr, flush=True); "
    "_h = logging.StreamHandler(sys.stderr); "
    "_l = logging.getLogger('session_buddy.mcp.tools.session.admin_shell_tracking_tools'); "
    "_l.addHandler(_h); _l.setLevel(logging.INFO); _l.propagate = False\n"
)
HOW_TO_RUN = (
    "build them with scripts/real-envs.sh, then run these tests on Python 3.14 inside the sid root: "
    "scripts/in-sid.sh /opt/real-envs/py314-suite/bin/pytest -m real_current"
)


def current_env_dir(name: str, constraints_file: str) -> Path:
    """<ENVS>/<name>-<sha256 of the constraints file, 12 hex>, as real-envs-current.sh names it."""
    digest = hashlib.sha256((CONSTRAINTS / constraints_file).read_bytes()).hexdigest()[:12]
    return ENVS / f"{name}-{digest}"


def _ready_python(venv: Path) -> Path:
    if sys.version_info[:2] < (3, 14):
        _unavailable(f"the current releases need Python 3.14, this is {sys.version.split()[0]}: {HOW_TO_RUN}")
    python = venv / "bin" / "python"
    stamp = venv / ".real-envs-stamp"
    if not python.exists() or not stamp.exists() or stamp.read_text().strip() != venv.name.rsplit("-", 1)[1]:
        _unavailable(f"no ready venv at {venv}: {HOW_TO_RUN}")
    return python


@pytest.fixture(scope="session")
def session_buddy_python() -> Path:
    """Python 3.14 with session-buddy==0.36.0."""
    return _ready_python(current_env_dir("session-buddy-0.36.0", "session-buddy-0.36.0.txt"))


@pytest.fixture(scope="session")
def oneiric_python() -> Path:
    """Python 3.14 with oneiric==0.33.3 and this checkout (editable, no overlay)."""
    venv = current_env_dir("oneiric-0.33.3", "oneiric-0.33.3.txt")
    python = _ready_python(venv)
    project_stamp = venv / ".oneiric-session-stamp"
    installed_from = project_stamp.read_text().split()[0] if project_stamp.exists() else None
    if installed_from != str(REPO):
        _unavailable(f"{venv} has oneiric-session from {installed_from}, not {REPO}: {HOW_TO_RUN}")
    return python


@pytest.fixture(scope="session")
def session_buddy_launcher(session_buddy_python: Path) -> Callable[..., ServerLaunch]:
    """launch(home, extra_env=None) -> the real Session-Buddy 0.36.0 over stdio, HOME and cwd at home."""

    def launch(home: Path, extra_env: Mapping[str, str] | None = None) -> ServerLaunch:
        home.mkdir(parents=True, exist_ok=True)
        return ServerLaunch(
            command=str(session_buddy_python),
            args=["-c", TRACKING_LOG + SB_SERVE],
            env={"HOME": str(home), **(extra_env or {})},
            cwd=str(home),
            home=home,
        )

    return launch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.real_current)
