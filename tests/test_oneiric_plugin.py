"""The `oneiric.adapters` entry point without the real Oneiric (the dev venv has none).

Import-cost and failure checks run in a fresh interpreter, so sys.modules shows exactly
what the call imported; "Oneiric" there is absent or a fake package on sys.path.
The real Oneiric 0.17.0 is exercised in tests/integration/test_real_oneiric_resolver.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from oneiric_session.errors import ConfigError
from oneiric_session.tracking import oneiric_plugin
from oneiric_session.tracking.providers.memory import MemoryTracker
from oneiric_session.tracking.providers.noop import NoopTracker
from oneiric_session.tracking.providers.session_buddy import SessionBuddyTracker

REPO = Path(__file__).resolve().parents[1]

# Loads the entry point as Oneiric's loader would (EntryPoint.load(), then a no-argument call).
CALL = """
import json, sys
from importlib.metadata import EntryPoint
before = set(sys.modules)
adapters = EntryPoint(
    name="oneiric-session", value="oneiric_session.tracking.oneiric_plugin:adapters", group="oneiric.adapters"
).load()
payload = adapters()
print(json.dumps({
    "payload": [vars(item) if hasattr(item, "__dict__") else repr(item) for item in payload],
    "imported": sorted(set(sys.modules) - before),
}, default=lambda value: getattr(value, "__qualname__", repr(value))))
"""

# A stand-in for oneiric.adapters.metadata: records its arguments, fails for the providers in $FAIL.
FAKE_METADATA = """
import os

class AdapterMetadata:
    def __init__(self, **fields):
        failing = os.environ.get("FAIL", "").split(",")
        if "*" in failing or fields["provider"] in failing:
            raise RuntimeError(f"cannot describe {fields['provider']}")
        self.__dict__.update(fields)
"""
FAKE_RESOLUTION = """
import enum

class CandidateSource(str, enum.Enum):
    ENTRY_POINT = "entry_point"
"""


def heavy(modules: list[str], *, oneiric_present: bool = False) -> list[str]:
    """Modules the call should not pay for; with Oneiric present, it and our (stdlib) registry are due."""
    roots = {"pydantic", "yaml", "mcp"} | (set() if oneiric_present else {"oneiric"})
    ours = () if oneiric_present else ("oneiric_session.tracking.registry", "oneiric_session.config")
    return [m for m in modules if m.split(".")[0] in roots or m.startswith(ours)]


def fake_oneiric(root: Path, metadata_source: str = FAKE_METADATA) -> Path:
    for package in ("oneiric", "oneiric/adapters", "oneiric/core"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "oneiric/adapters/metadata.py").write_text(metadata_source)
    (root / "oneiric/core/resolution.py").write_text(FAKE_RESOLUTION)
    return root


def call_entry_point(
    tmp_path: Path, *, site: Path | None = None, fail: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """Run CALL in a fresh interpreter; its result and its stderr lines (the lastResort log handler)."""
    path = [str(site)] if site else []
    env = {"PYTHONPATH": ":".join([*path, str(REPO)]), "FAIL": fail, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", CALL], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr.splitlines()


def test_without_oneiric_returns_nothing_imports_nothing_and_says_nothing(tmp_path: Path) -> None:
    result, log = call_entry_point(tmp_path)

    assert result["payload"] == []
    assert log == []
    assert heavy(result["imported"]) == []


def test_with_oneiric_offers_three_providers_with_callable_factories(tmp_path: Path) -> None:
    result, log = call_entry_point(tmp_path, site=fake_oneiric(tmp_path / "site"))

    assert log == []
    by_provider = {item["provider"]: item for item in result["payload"]}
    assert list(by_provider) == ["session-buddy", "noop", "memory"]
    for provider, item in by_provider.items():
        assert item["category"] == "session_tracker"
        assert item["factory"] == "create_" + provider.replace("-", "_")  # a callable, not a string
        assert item["description"]
        assert item["source"] == "entry_point"
    assert {p: item["stack_level"] for p, item in by_provider.items()} == {
        "session-buddy": 10,
        "noop": 0,
        "memory": 0,
    }
    # Building the descriptions still imports nothing heavy: settings are read at activation.
    assert heavy(result["imported"], oneiric_present=True) == []


def test_a_failing_metadata_is_left_out_with_one_log_line(tmp_path: Path) -> None:
    result, log = call_entry_point(tmp_path, site=fake_oneiric(tmp_path / "site"), fail="noop")

    assert [item["provider"] for item in result["payload"]] == ["session-buddy", "memory"]
    assert len(log) == 1
    assert "noop (RuntimeError: cannot describe noop)" in log[0]


def test_all_metadata_failing_returns_empty_with_one_log_line(tmp_path: Path) -> None:
    result, log = call_entry_point(tmp_path, site=fake_oneiric(tmp_path / "site"), fail="*")

    assert result["payload"] == []
    assert len(log) == 1
    assert all(f"{p} (RuntimeError" in log[0] for p in ("session-buddy", "noop", "memory"))


@pytest.mark.parametrize(
    ("metadata_source", "expected"),
    [
        ("raise RuntimeError('broken install')", "RuntimeError: broken install"),
        (
            "import oneiric_missing_dependency",
            "ModuleNotFoundError: No module named 'oneiric_missing_dependency'",
        ),
        ("", "ImportError: cannot import name 'AdapterMetadata'"),
    ],
    ids=["raises", "missing-dependency", "changed-api"],
)
def test_a_broken_oneiric_returns_empty_with_one_log_line(
    tmp_path: Path, metadata_source: str, expected: str
) -> None:
    result, log = call_entry_point(tmp_path, site=fake_oneiric(tmp_path / "site", metadata_source))

    assert result["payload"] == []
    assert len(log) == 1
    assert expected in log[0]


def write_settings(settings_dir: Path, document: dict[str, Any]) -> Path:
    settings_dir.mkdir(parents=True, exist_ok=True)
    (settings_dir / "adapters.yml").write_text(yaml.safe_dump(document))
    return settings_dir


@pytest.fixture
def settings_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our settings directory via $ONEIRIC_SESSION_SETTINGS_DIR, which the factories take no argument for."""
    directory = tmp_path / "settings"
    for var in (
        "ONEIRIC_SESSION_PROVIDER",
        "ONEIRIC_ADAPTERS__SELECTIONS__SESSION_TRACKER",
        "ONEIRIC_CONFIG",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ONEIRIC_SESSION_SETTINGS_DIR", str(directory))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return directory


def test_factories_build_the_provider_oneiric_chose_over_our_selection(settings_dir: Path) -> None:
    # Our file selects noop; Oneiric has already chosen, so each factory builds its own provider.
    write_settings(settings_dir, {"selections": {"session_tracker": "noop"}})

    assert isinstance(oneiric_plugin.create_memory(), MemoryTracker)
    assert isinstance(oneiric_plugin.create_noop(), NoopTracker)


def test_noop_and_memory_factories_survive_a_broken_settings_file(settings_dir: Path) -> None:
    # Turning tracking off must work even when our settings file is what is broken.
    settings_dir.mkdir(parents=True)
    (settings_dir / "adapters.yml").write_text("adapters: [unclosed\n")
    with pytest.raises(ConfigError):
        oneiric_plugin.create_session_buddy()
    assert isinstance(oneiric_plugin.create_noop(), NoopTracker)
    assert isinstance(oneiric_plugin.create_memory(), MemoryTracker)


def test_session_buddy_factory_reads_settings_dir_from_environment(
    settings_dir: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "elsewhere" / "spool.sqlite3"
    write_settings(
        settings_dir,
        {
            "selections": {"session_tracker": "noop"},
            "provider_settings": {"session-buddy": {"spool": {"path": str(spool)}}},
        },
    )

    tracker = oneiric_plugin.create_session_buddy()
    try:
        assert isinstance(tracker, SessionBuddyTracker)
        assert tracker.spool_path == spool
        assert tracker.health() is True
    finally:
        tracker.close()


def test_session_buddy_factory_raises_config_error_for_oneiric_to_report(settings_dir: Path) -> None:
    # http without url
    write_settings(settings_dir, {"provider_settings": {"session-buddy": {"transport": "http"}}})

    with pytest.raises(ConfigError, match="url"):
        oneiric_plugin.create_session_buddy()
