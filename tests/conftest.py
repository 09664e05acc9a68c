"""Fixtures shared by the suite (helpers live in `tests.support`; see tests/__init__.py)."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.delivery import Scene


@pytest.fixture
def scene_settings() -> dict[str, Any]:
    """Settings for the `scene` fixture (Scene's keyword overrides); a module overrides this fixture."""
    return {}


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scene_settings: dict[str, Any]) -> Iterator[Scene]:
    """An isolated user with the bundled server (tests/support/delivery.Scene); its agents stopped after."""
    scene = Scene(tmp_path, **scene_settings)
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])  # this process finds its socket
    yield scene
    scene.stop_agents()


# A real second local user, made by the suite when it runs as root (tests about other users).
OTHER_USER = "i13sec-mallory"


@pytest.fixture(scope="session")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A real second local user (we are root): the attacker, or a victim that root's bypass would hide."""
    if os.getuid() != 0:
        pytest.skip("creating a second user needs root")
    created = False
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", OTHER_USER], check=True)
        created = True
    yield pwd.getpwnam(OTHER_USER)
    if created:
        subprocess.run(["userdel", OTHER_USER], check=False)
