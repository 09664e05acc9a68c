"""The pytest plugin, used from a separate test project (pytester, in a fresh pytest process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROJECT_TESTS = '''
import os
import pytest
from oneiric_session.tracking.registry import resolve_tracker

def run_shell(component):
    """What an embedding project does: resolve its tracker from configuration and use it."""
    tracker = resolve_tracker()
    handle = tracker.start(component_name=component, shell_type="DemoShell", metadata={"v": "1"})
    return tracker.provider, tracker.end(handle, exit_reason="user_exit") if handle else False

def test_memory_by_default(session_tracker):
    assert run_shell("demo") == ("memory", True)
    (session,) = session_tracker.ended_sessions()
    assert (session.component_name, session.shell_type, session.metadata) == ("demo", "DemoShell", {"v": "1"})

def test_each_test_starts_empty(session_tracker):
    assert session_tracker.sessions == []

@pytest.mark.parametrize("session_tracker", ["memory", "noop"], indirect=True)
def test_parametrized(session_tracker):
    assert run_shell("demo")[0] == session_tracker.provider

def test_selection_restored_afterwards():
    assert "ONEIRIC_SESSION_PROVIDER" not in os.environ

def test_beats_the_project_settings(session_tracker, tmp_path):
    (tmp_path / "adapters.yml").write_text("session_tracker: session-buddy\\n")
    assert resolve_tracker(tmp_path).provider == "memory"
'''


@pytest.fixture
def project(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    home = tmp_path_factory.mktemp("home")
    for var in ("HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.delenv("ONEIRIC_SESSION_PROVIDER", raising=False)
    pytester.makepyfile(test_project=PROJECT_TESTS)
    return pytester


def test_fixture_swaps_and_restores_the_tracker(project: pytest.Pytester) -> None:
    """The plugin is found through its entry point; the fixture selects memory/noop for one test only."""
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_unknown_parameter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("session_tracker", ["redis"], indirect=True)
        def test_x(session_tracker):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*provider must be one of*'redis'*"])


def test_plugin_imports_nothing_heavy() -> None:
    """Loaded at every pytest start of every project that installs this package."""
    code = "import json, sys; import oneiric_session.testing; print(json.dumps([*sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert loaded & {"pydantic", "pydantic_settings", "yaml", "mcp", "anyio", "platformdirs"} == set()
