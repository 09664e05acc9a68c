"""The Oneiric-style resolver: ranking, explain(), entry points, build/resolve, the light path."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oneiric_session.config.loader import LoadedConfig
from oneiric_session.errors import ConfigError
from oneiric_session.tracking.providers.memory import MemoryTracker
from oneiric_session.tracking.providers.noop import NoopTracker
from oneiric_session.tracking.registry import (
    BUILTINS,
    Candidate,
    Registry,
    build_tracker,
    default_registry,
    resolve_tracker,
)


def order(registry: Registry, selection: str | None = None) -> list[str]:
    return [r.candidate.provider for r in registry.explain(selection)]


def cand(provider: str, **kwargs) -> Candidate:
    return Candidate(provider, lambda config: NoopTracker(), **kwargs)


def test_explicit_selection_beats_priority() -> None:
    registry = Registry([cand("low"), cand("high", priority=100, stack_level=100)])
    assert registry.resolve("low").provider == "low"
    assert order(registry, "low") == ["low", "high"]


def test_priority_beats_stack_level() -> None:
    registry = Registry([cand("stacked", stack_level=50), cand("prior", priority=1)])
    assert registry.resolve().provider == "prior"


def test_stack_level_beats_registration_order() -> None:
    registry = Registry([cand("first", stack_level=2), cand("second", stack_level=1)])
    assert registry.resolve().provider == "first"


def test_last_registered_wins_a_tie() -> None:
    registry = Registry([cand("first"), cand("second")])
    assert order(registry) == ["second", "first"]


def test_same_provider_registered_twice_the_later_wins_when_selected() -> None:
    first, later = cand("twice"), cand("twice")
    registry = Registry([first, later, cand("other", priority=9)])
    assert registry.resolve("twice") is later


def test_explain_gives_ranking_and_reasons() -> None:
    ranking = Registry(BUILTINS).explain("noop", selection_source="env:ONEIRIC_SESSION_PROVIDER")
    assert [r.candidate.provider for r in ranking] == ["noop", "session-buddy", "memory"]
    assert [r.selected for r in ranking] == [True, False, False]
    assert ranking[0].reasons == (
        "selected: provider = 'noop' (environment variable ONEIRIC_SESSION_PROVIDER)",
        "priority 0",
        "stack_level 0",
        "registered #2 (builtin)",
    )
    assert ranking[1].as_dict()["reasons"][:3] == ["not selected", "priority 0", "stack_level 10"]


def test_unknown_selection_selects_nothing_and_resolve_lists_providers() -> None:
    registry = Registry(BUILTINS)
    assert not any(r.selected for r in registry.explain("redis"))
    with pytest.raises(
        ConfigError, match=r"unknown session tracker provider 'redis' \(from argument\); registered"
    ):
        registry.resolve("redis")


def test_register_refuses_other_categories() -> None:
    with pytest.raises(ValueError, match="adapter/cache"):
        Registry([cand("x", category="cache")])


def test_build_tracker_builtins(tmp_path: Path) -> None:
    assert isinstance(build_tracker(tmp_path, provider="noop", environ={}), NoopTracker)
    assert isinstance(build_tracker(tmp_path, environ={"ONEIRIC_SESSION_PROVIDER": "memory"}), MemoryTracker)


def test_provider_argument_beats_environment(tmp_path: Path) -> None:
    tracker = build_tracker(tmp_path, provider="noop", environ={"ONEIRIC_SESSION_PROVIDER": "memory"})
    assert tracker.provider == "noop"


def test_factories_get_config_only_when_they_need_it(tmp_path: Path) -> None:
    seen = {}

    def factory(name: str):
        def create(config):
            seen[name] = config
            return NoopTracker()

        return create

    registry = Registry(
        [Candidate("light", factory("light"), needs_config=False), Candidate("full", factory("full"))]
    )
    build_tracker(tmp_path, provider="light", environ={}, registry=registry)
    build_tracker(
        tmp_path, provider="full", environ={"ONEIRIC_SESSION_RETRY__ATTEMPTS": "4"}, registry=registry
    )
    assert seen["light"] is None
    assert isinstance(seen["full"], LoadedConfig) and seen["full"].settings.retry.attempts == 4


def test_resolve_tracker_falls_back_to_noop_with_one_log_line(tmp_path: Path, caplog) -> None:
    (tmp_path / "adapters.yml").write_text("session_tracker: [\n")
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        tracker = resolve_tracker(tmp_path, environ={})
    assert isinstance(tracker, NoopTracker)
    assert len(caplog.records) == 1 and caplog.records[0].name == "oneiric_session"
    assert "configuration error" in caplog.records[0].getMessage()
    assert "adapters.yml line 2" in caplog.records[0].getMessage()


def test_resolve_tracker_survives_a_failing_factory(tmp_path: Path, caplog) -> None:
    def broken(config):
        raise RuntimeError("cannot start")

    registry = Registry([Candidate("broken", broken, needs_config=False)])
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        tracker = resolve_tracker(tmp_path, provider="broken", environ={}, registry=registry)
    assert isinstance(tracker, NoopTracker)
    assert [r.getMessage() for r in caplog.records] == [
        "session tracking is off (provider noop): RuntimeError: cannot start"
    ]


def test_resolve_tracker_with_a_valid_selection(tmp_path: Path) -> None:
    assert isinstance(
        resolve_tracker(tmp_path, environ={"ONEIRIC_SESSION_PROVIDER": "memory"}), MemoryTracker
    )


def test_default_registry_has_the_builtins() -> None:
    assert {"session-buddy", "noop", "memory"} <= set(default_registry().providers())


def _run(code: str, tmp_path: Path, extra_path: Path | None = None) -> tuple[dict, str]:
    """Run `code` in a fresh interpreter; its last stdout line is JSON. Returns it and stderr."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize("provider", ["noop", "memory"])
def test_light_path_imports_neither_pydantic_nor_mcp(tmp_path: Path, provider: str) -> None:
    """A shell with tracking off (or memory) pays for the standard library and PyYAML only."""
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "adapters.yml").write_text(f"session_tracker: {provider}\n")
    result, _ = _run(
        """
        import json, sys
        from oneiric_session.tracking.registry import resolve_tracker
        tracker = resolve_tracker()
        loaded = {m.split(".")[0] for m in sys.modules}
        heavy = sorted(loaded & {"pydantic", "pydantic_settings", "mcp", "anyio"})
        # a built-in selection does not scan entry points either
        heavy += ["importlib.metadata"] if "importlib.metadata" in sys.modules else []
        print(json.dumps({"provider": tracker.provider, "heavy": heavy}))
        """,
        tmp_path,
    )
    assert result == {"provider": provider, "heavy": []}


def _fake_distribution(root: Path, entry_points: str, module: str) -> Path:
    dist = root / "fake_tracker-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-tracker\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[oneiric_session.tracking.providers]\n{entry_points}")
    (root / "fake_tracker.py").write_text(textwrap.dedent(module))
    return root


def test_third_party_provider_from_entry_point(tmp_path: Path) -> None:
    """An installed distribution adds a provider through the `oneiric_session.tracking.providers` group;
    a broken entry point is skipped with a log line."""
    site = _fake_distribution(
        tmp_path / "site",
        "fake = fake_tracker:candidates\nbroken = fake_tracker:missing\nshadow = fake_tracker:shadow\n",
        """
        from oneiric_session.tracking.providers.memory import MemoryTracker
        from oneiric_session.tracking.registry import Candidate

        class FakeTracker(MemoryTracker):
            provider = "fake"

        def candidates():
            create = lambda config: FakeTracker()
            return [Candidate("fake", create, "a test provider", priority=5, needs_config=False)]

        shadow = Candidate("noop", lambda config: FakeTracker())
        """,
    )
    result, stderr = _run(
        """
        import json, logging
        from oneiric_session.tracking.registry import build_tracker, default_registry
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        ranking = [r.as_dict() for r in default_registry().explain(None)]
        tracker = build_tracker(provider="fake", environ={})
        print(json.dumps({"ranking": ranking, "provider": tracker.provider}))
        """,
        tmp_path,
        site,
    )
    assert result["provider"] == "fake"
    first = result["ranking"][0]
    assert (first["provider"], first["origin"], first["selected"]) == ("fake", "entry point fake", True)
    assert "priority 5" in first["reasons"]
    assert "ignoring session tracker entry point 'broken': AttributeError" in stderr
    assert (
        "ignoring session tracker entry point 'shadow': ValueError: provider names ['noop'] are built in"
        in stderr
    )
    assert [c["origin"] for c in result["ranking"] if c["provider"] == "noop"] == ["builtin"]
