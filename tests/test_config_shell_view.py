"""The validated-settings cache the shell reads instead of importing pydantic."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oneiric_session.common import paths
from oneiric_session.config import view_store
from oneiric_session.config.loader import load_config
from oneiric_session.config.shell_view import ShellView, cache_dir, cached_view
from oneiric_session.config.view_store import load_shell_view
from oneiric_session.errors import ConfigError
from oneiric_session.tracking.providers.noop import NoopTracker
from oneiric_session.tracking.providers.session_buddy import SessionBuddyTracker
from oneiric_session.tracking.registry import resolve_tracker

SETTINGS = """\
selections:
  session_tracker: session-buddy
provider_settings:
  session-buddy:
    transport: http
    url: http://127.0.0.1:9/mcp
    exit_wait_seconds: 1.5
    limits: {max_string_chars: 200}
    spool: {max_rows: 77, max_age_days: 2}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache and the default spool live under this home, never the real one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = tmp_path / "settings"
    settings.mkdir()
    (settings / "adapters.yml").write_text(SETTINGS)
    return tmp_path


def entries() -> list[Path]:
    return sorted(cache_dir().glob("*.json")) if cache_dir().is_dir() else []


def test_a_second_load_is_a_hit_with_the_same_values(home: Path) -> None:
    settings, env = home / "settings", {"SESSION_BUDDY_TOKEN": "t0ken"}
    assert cached_view(settings, environ=env)[0] is None
    first = load_shell_view(settings, environ=env)
    hit, _ = cached_view(settings, environ=env)
    assert hit is not None
    assert hit[:-1] == first[:-1] == ShellView.from_config(load_config(settings, environ=env))[:-1]
    assert (hit.destination.transport, hit.spool_max_rows, hit.limits.max_string_chars) == ("http", 77, 200)
    assert hit.report_cwd == "/tmp"  # http without report_cwd: a directory any server host has
    assert hit.spool_path == paths.default_spool_path()
    assert hit.token() == "t0ken"  # read from the environment at use time, never cached


def test_the_entry_is_private_and_holds_no_token(home: Path) -> None:
    token_file = home / "token"
    token_file.write_text("s3cret-from-file")
    token_file.chmod(0o600)
    env = {"SESSION_BUDDY_TOKEN": "s3cret-from-env", "ONEIRIC_SESSION_TOKEN_FILE": str(token_file)}
    view = load_shell_view(home / "settings", environ=env)
    [entry] = entries()
    assert entry.stat().st_mode & 0o777 == 0o600 and cache_dir().stat().st_mode & 0o777 == 0o700
    text = entry.read_text()
    assert "s3cret" not in text and "s3cret" not in repr(view)
    assert view.token() == "s3cret-from-env"
    assert cached_view(home / "settings", environ={k: env[k] for k in list(env)[1:]})[0].token() == (
        "s3cret-from-file"
    )


@pytest.mark.parametrize(
    "change",
    [
        "edit a file",
        "add a file",
        "ONEIRIC_CONFIG file",
        "setting variable",
        "selection variable",
        "session buddy path",
        "override",
        "home",
        "state home",
        "bundled server's database",
        "data home",
    ],
)
def test_any_input_change_misses(home: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    settings = home / "settings"
    env: dict[str, str] = {}
    overrides: dict[str, object] = {}
    load_shell_view(settings, environ=env, overrides=overrides)
    assert cached_view(settings, environ=env, overrides=overrides)[0] is not None
    if change == "edit a file":
        (settings / "adapters.yml").write_text(SETTINGS.replace("77", "78"))
    elif change == "add a file":
        (settings / "oneiric.yaml").write_text("adapters: {}\n")
    elif change == "ONEIRIC_CONFIG file":
        (home / "extra.yaml").write_text("adapters: {}\n")
        env["ONEIRIC_CONFIG"] = str(home / "extra.yaml")
    elif change == "setting variable":
        env["ONEIRIC_SESSION_RETRY__ATTEMPTS"] = "4"
    elif change == "selection variable":
        env["ONEIRIC_ADAPTERS__SELECTIONS__SESSION_TRACKER"] = "session-buddy"
    elif change == "session buddy path":
        env["SESSION_BUDDY_PATH"] = str(home)
    elif change == "override":
        overrides["exit_wait_seconds"] = 3
    elif change == "home":
        monkeypatch.setenv("HOME", str(home / "elsewhere"))
        monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))  # the cache itself stays put
    elif change == "state home":
        monkeypatch.setenv("XDG_STATE_HOME", str(home / "state2"))
    elif change == "bundled server's database":  # the default server's launch line names it
        env["ONEIRIC_SESSION_DB"] = str(home / "other.sqlite3")
    elif change == "data home":  # where that database is by default
        monkeypatch.setenv("XDG_DATA_HOME", str(home / "data2"))
    assert cached_view(settings, environ=env, overrides=overrides)[0] is None


def test_unrelated_variables_and_tokens_do_not_miss(home: Path) -> None:
    settings = home / "settings"
    load_shell_view(settings, environ={})
    env = {"SESSION_BUDDY_TOKEN": "t", "ONEIRIC_SESSION_NOT_A_SETTING": "1"}
    assert cached_view(settings, environ=env)[0] is not None


def test_a_change_during_validation_is_not_stored(home: Path) -> None:
    settings = home / "settings"
    view, key = cached_view(settings, environ={})
    assert view is None and key is not None
    fresh = ShellView.from_config(load_config(settings, environ={}))
    (settings / "adapters.yml").write_text(SETTINGS.replace("77", "78"))  # after the key was taken
    view_store.store(fresh, key, settings, environ={})
    assert entries() == []


def test_a_corrupt_entry_is_ignored_and_rewritten(home: Path) -> None:
    settings = home / "settings"
    load_shell_view(settings, environ={})
    [entry] = entries()
    for garbage in ("{not json", json.dumps({"format": 1, "key": "other", "view": {}}), '{"format": 1}'):
        entry.write_text(garbage)
        assert cached_view(settings, environ={})[0] is None
        assert load_shell_view(settings, environ={}).spool_max_rows == 77
        assert json.loads(entry.read_text())["view"]["spool_max_rows"] == 77


def test_an_entry_others_could_write_is_not_trusted(home: Path) -> None:
    settings = home / "settings"
    load_shell_view(settings, environ={})
    [entry] = entries()
    entry.chmod(0o622)
    assert cached_view(settings, environ={})[0] is None
    entry.chmod(0o600)
    cache_dir().chmod(0o777)
    assert cached_view(settings, environ={})[0] is None
    cache_dir().chmod(0o700)
    assert cached_view(settings, environ={})[0] is not None


def test_missing_directories_are_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "a" / "state"))
    old = os.umask(0o022)
    try:
        load_shell_view(tmp_path, environ={})
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "state", tmp_path / "a" / "state" / "oneiric-session"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert len(entries()) == 1


def test_errors_are_raised_and_never_cached(home: Path) -> None:
    settings = home / "settings"
    env = {"ONEIRIC_SESSION_RETRY__ATTEMPTS": "0"}
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"retry\.attempts"):
            load_shell_view(settings, environ=env)
    assert entries() == []


def test_resolve_tracker_reports_an_error_once_then_noop(home: Path, caplog) -> None:
    settings = home / "settings"
    load_shell_view(settings, environ={})  # a valid entry exists for other inputs
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        tracker = resolve_tracker(settings, environ={"ONEIRIC_SESSION_LIMITS__MAX_STRING_CHARS": "1"})
    assert isinstance(tracker, NoopTracker)
    [record] = caplog.records
    assert "configuration error" in record.getMessage() and "limits.max_string_chars" in record.getMessage()


def test_resolve_tracker_uses_the_cached_view(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = home / "settings"
    first = resolve_tracker(settings, environ={})
    assert isinstance(first, SessionBuddyTracker) and len(entries()) == 1

    def no_validation(*args, **kwargs):
        raise AssertionError("validated again on a hit")

    monkeypatch.setattr("oneiric_session.config.loader.validate", no_validation)
    second = resolve_tracker(settings, environ={})
    assert isinstance(second, SessionBuddyTracker)
    assert (second.destination, second.limits, second.spool_path) == (
        first.destination,
        first.limits,
        first.spool_path,
    )


def test_entries_are_bounded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_store, "MAX_ENTRIES", 3)
    for attempts in range(1, 7):
        load_shell_view(home / "settings", environ={"ONEIRIC_SESSION_RETRY__ATTEMPTS": str(attempts)})
        assert len(entries()) <= 3
    # the newest is kept
    assert cached_view(home / "settings", environ={"ONEIRIC_SESSION_RETRY__ATTEMPTS": "6"})[0] is not None


@pytest.mark.parametrize("state_home", [None, "relative/state", "/abs/state"])
def test_cache_dir_is_under_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_home: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if state_home is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", state_home)
    assert cache_dir() == paths.state_dir() / "config-cache"


def test_a_hit_imports_neither_pydantic_nor_yaml(home: Path) -> None:
    """In a fresh interpreter: the first start validates (pydantic), the next ones do not."""
    code = textwrap.dedent(
        """
        import json, sys
        from oneiric_session.tracking.registry import resolve_tracker
        tracker = resolve_tracker()
        tracker._waker = lambda *args, **kwargs: "failed"  # no agent: this test stays in-process
        handle = tracker.start(component_name="c", shell_type="AdminShell", metadata={"k": 1})
        ended = tracker.end(handle, exit_reason="user_exit")
        tracker.close()
        loaded = {m.split(".")[0] for m in sys.modules}
        costly = {"pydantic", "pydantic_settings", "yaml", "mcp", "hashlib", "uuid", "subprocess", "tempfile"}
        print(json.dumps({"recorded": bool(handle and ended), "heavy": sorted(loaded & costly)}))
        """
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(home / "settings"),
    }

    def run() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=home, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    validating = {"pydantic", "pydantic_settings", "yaml"}
    assert validating <= set(run()["heavy"])
    # a hit: the start and end are recorded with the standard library's cheap modules only
    assert run() == {"recorded": True, "heavy": []}
    (home / "settings" / "adapters.yml").write_text(SETTINGS.replace("77", "78"))
    assert validating <= set(run()["heavy"])
