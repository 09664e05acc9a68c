"""The cheapest provider takes the cheapest path: a shell that selected `noop` (or `memory`) once
parses no settings file on its next start, whichever way it was selected; a changed file is seen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = (
    "import sys; from oneiric_session.tracking.registry import resolve_tracker; t = resolve_tracker(); "
    "print(type(t).__name__, 'yaml' in sys.modules, 'pydantic' in sys.modules)"
)


def _start(tmp_path: Path, **env: str) -> tuple[str, bool, bool]:
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path / "settings"),
        **env,
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    name, yaml, pydantic = out.stdout.split()
    return name, yaml == "True", pydantic == "True"


WAYS = {
    "adapters.yml": ({"adapters.yml": "session_tracker: noop\n"}, {}),
    "adapters.yml, Oneiric's shape": (
        {"adapters.yml": "adapters:\n  selections:\n    session_tracker: memory\n"},
        {},
    ),
    "oneiric.yaml": ({"oneiric.yaml": "adapters:\n  selections:\n    session_tracker: noop\n"}, {}),
    "environment over a file": (
        {"adapters.yml": "session_tracker: session-buddy\n"},
        {"ONEIRIC_SESSION_PROVIDER": "noop"},
    ),
    "Oneiric's environment over a file": (
        {"adapters.yml": "session_tracker: session-buddy\n"},
        {"ONEIRIC_ADAPTERS__SELECTIONS__SESSION_TRACKER": "noop"},
    ),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_a_provider_needing_no_settings_parses_no_file_after_its_first_start(
    tmp_path: Path, way: str
) -> None:
    files, env = WAYS[way]
    (tmp_path / "settings").mkdir()
    for name, text in files.items():
        (tmp_path / "settings" / name).write_text(text)
    first = _start(tmp_path, **env)
    assert first[0] in ("NoopTracker", "MemoryTracker") and first[2] is False
    assert _start(tmp_path, **env) == (first[0], False, False)


def test_a_changed_settings_file_is_read_again(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    adapters = tmp_path / "settings" / "adapters.yml"
    adapters.write_text("session_tracker: noop\n")
    assert _start(tmp_path)[0] == "NoopTracker"
    adapters.write_text("session_tracker: memory\n")
    assert _start(tmp_path)[:2] == ("MemoryTracker", True)
    adapters.write_text("session_tracker: [not, a, name]\n")  # an error is never cached
    assert _start(tmp_path)[0] == "NoopTracker"
    assert _start(tmp_path)[:2] == ("NoopTracker", True)


def test_the_remembered_selection_is_a_small_entry_of_our_own(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "adapters.yml").write_text("session_tracker: noop\n")
    _start(tmp_path)
    (entry,) = (tmp_path / "state" / "oneiric-session" / "config-cache").glob("*.json")
    assert entry.stat().st_mode & 0o777 == 0o600
    data = json.loads(entry.read_text())
    assert data["selection"] == ["noop", f"file:{tmp_path / 'settings' / 'adapters.yml'}"]
