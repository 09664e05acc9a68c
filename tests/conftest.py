"""Fixtures shared by the suite (helpers live in `tests.support`; see tests/__init__.py)."""

from __future__ import annotations

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
