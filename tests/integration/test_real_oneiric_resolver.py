"""Our entry point in the real Oneiric 0.17.0 resolver (CONTRACT.md section 2, "Oneiric's resolver").

Each test boots Oneiric in a Python 3.13 subprocess the way its CLI does (cli.py
`_initialize_state`: `load_settings()`, `Resolver(resolver_settings_from_config(...))`,
`plugins.register_entrypoint_plugins(...)`), from a project directory in tmp_path with
HOME and XDG directories in tmp_path, then lets `LifecycleManager.activate()` build
the session tracker. Importing Oneiric costs ~1.3 s, so each test is one subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ENTRY_POINT = "oneiric-session"
PROVIDERS = {"session-buddy", "noop", "memory"}
SELECTION_ENV = "ONEIRIC_ADAPTERS__SELECTIONS__SESSION_TRACKER"

# Oneiric's CLI boot (cli.py _initialize_state), then activate; the result as JSON in argv[1].
BOOT = """
import asyncio, json, sys
from oneiric import plugins
from oneiric.core.config import load_settings, resolver_settings_from_config
from oneiric.core.lifecycle import LifecycleError, LifecycleManager
from oneiric.core.resolution import Resolver

settings = load_settings()
resolver = Resolver(settings=resolver_settings_from_config(settings))
report = plugins.register_entrypoint_plugins(resolver, settings.plugins)
explained = resolver.explain("adapter", "session_tracker").as_dict()["ordered"]
result = {"report": report.as_dict(), "ordered": [entry["provider"] for entry in explained]}
try:
    tracker = asyncio.run(LifecycleManager(resolver).activate("adapter", "session_tracker"))
except LifecycleError as exc:
    result["error"] = str(exc)
    result["cause"] = repr(exc.__cause__)
else:
    result["tracker"] = {
        "class": type(tracker).__name__,
        "provider": tracker.provider,
        "health": tracker.health(),
        "spool_path": str(getattr(tracker, "spool_path", "")),
    }
with open(sys.argv[1], "w") as out:
    json.dump(result, out)
"""


def project(tmp_path: Path, oneiric_yaml: dict[str, Any] | None = None) -> Path:
    """A project directory (Oneiric reads settings/ relative to the cwd) with settings/oneiric.yaml."""
    root = tmp_path / "project"
    (root / "settings").mkdir(parents=True)
    if oneiric_yaml is not None:
        (root / "settings" / "oneiric.yaml").write_text(yaml.safe_dump(oneiric_yaml))
    return root


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment minus Oneiric's and ours, with every user directory in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ONEIRIC_", "SESSION_BUDDY_"))}
    home = tmp_path / "home"
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        IPYTHONDIR=str(home / "ipython"),
    )
    env.update(extra)
    return env


def boot(oneiric_python: Path, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    out = cwd / "boot-result.json"
    proc = subprocess.run(
        [str(oneiric_python), "-c", BOOT, str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"Oneiric boot failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def assert_entry_point_loaded(result: dict[str, Any]) -> None:
    report = result["report"]
    assert report["errors"] == [], report
    entries = [e for e in report["entries"] if e["entry_point"] == ENTRY_POINT]
    assert entries, (
        f"entry point {ENTRY_POINT!r} not in group oneiric.adapters: is it declared in pyproject.toml "
        f"and the venv rebuilt (scripts/real-envs.sh)? report: {report}"
    )
    assert entries[0]["group"] == "oneiric.adapters"
    assert entries[0]["registered_candidates"] == 3
    assert set(result["ordered"]) == PROVIDERS


def with_entry_points(**adapters: Any) -> dict[str, Any]:
    """settings/oneiric.yaml that turns Oneiric's entry points on, as our docs tell users to."""
    document: dict[str, Any] = {"plugins": {"entry_points": ["oneiric.adapters"]}}
    if adapters:
        document["adapters"] = adapters
    return document


def test_selection_in_settings_file_activates_memory(oneiric_python: Path, tmp_path: Path) -> None:
    root = project(tmp_path, with_entry_points(selections={"session_tracker": "memory"}))

    result = boot(oneiric_python, root, clean_env(tmp_path))

    assert_entry_point_loaded(result)
    assert result["ordered"][0] == "memory"
    assert result["tracker"] == {
        "class": "MemoryTracker",
        "provider": "memory",
        "health": True,
        "spool_path": "",
    }


def test_environment_selection_beats_settings_file(oneiric_python: Path, tmp_path: Path) -> None:
    root = project(tmp_path, with_entry_points(selections={"session_tracker": "memory"}))

    result = boot(oneiric_python, root, clean_env(tmp_path, **{SELECTION_ENV: "noop"}))

    assert_entry_point_loaded(result)
    assert result["ordered"][0] == "noop"
    assert result["tracker"]["class"] == "NoopTracker"
    assert result["tracker"]["health"] is True


def test_auto_load_without_selection_activates_session_buddy(oneiric_python: Path, tmp_path: Path) -> None:
    # No settings file at all: entry points on from the environment; session-buddy wins on stack_level.
    root = project(tmp_path)
    env = clean_env(tmp_path, ONEIRIC_PLUGINS__AUTO_LOAD="true")

    result = boot(oneiric_python, root, env)

    assert_entry_point_loaded(result)
    assert result["ordered"][0] == "session-buddy"
    tracker = result["tracker"]
    assert (tracker["class"], tracker["provider"], tracker["health"]) == (
        "SessionBuddyTracker",
        "session-buddy",
        True,
    )
    # Health made the spool's outbox (what a shell writes): in the test's XDG_STATE_HOME, nowhere else.
    spool = Path(tracker["spool_path"])
    assert spool.is_relative_to(Path(env["XDG_STATE_HOME"]))
    assert Path(f"{spool}.outbox").is_dir()


def test_unwritable_spool_fails_activation(oneiric_python: Path, tmp_path: Path) -> None:
    # "Healthy" means "can accept events": a spool that cannot be created is a failed activation.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool's directory should be\n")
    spool_settings = {"spool": {"path": str(blocker / "spool.sqlite3")}}
    root = project(
        tmp_path,
        with_entry_points(
            selections={"session_tracker": "session-buddy"},
            provider_settings={"session-buddy": spool_settings},
        ),
    )

    result = boot(oneiric_python, root, clean_env(tmp_path))

    assert_entry_point_loaded(result)
    assert "tracker" not in result
    assert result["error"] == "Health check failed for adapter:session_tracker (session-buddy)"


def test_configuration_error_fails_activation_not_registration(oneiric_python: Path, tmp_path: Path) -> None:
    # Our settings are read when Oneiric activates the provider, so a mistake there cannot stop
    # Oneiric's boot: the entry point registers cleanly and activation reports the ConfigError.
    root = project(
        tmp_path,
        with_entry_points(
            selections={"session_tracker": "session-buddy"},
            provider_settings={"session-buddy": {"transport": "http"}},
        ),
    )

    result = boot(oneiric_python, root, clean_env(tmp_path))

    assert_entry_point_loaded(result)
    assert result["error"] == "Swap failed for adapter:session_tracker (session-buddy)"
    assert result["cause"].startswith("ConfigError(")
    assert "url" in result["cause"]


def test_oneiric_cli_swaps_to_the_selected_provider(oneiric_python: Path, tmp_path: Path) -> None:
    # The real `oneiric` command, end to end: its own boot, then `swap` (LifecycleManager.swap).
    root = project(tmp_path, with_entry_points(selections={"session_tracker": "noop"}))
    env = clean_env(tmp_path, **{SELECTION_ENV: "memory"})

    proc = subprocess.run(
        [str(oneiric_python.parent / "oneiric"), "swap", "session_tracker"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Swapped adapter:session_tracker" in proc.stdout
    assert "oneiric_session.tracking.providers.memory.MemoryTracker object" in proc.stdout
