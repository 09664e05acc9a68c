"""The settings model (defaults, ranges, descriptions) and what LoadedConfig derives from it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from oneiric_session.config import sources
from oneiric_session.config.loader import SESSION_BUDDY_STDIO_CODE, load_config
from oneiric_session.config.models import SessionBuddySettings
from oneiric_session.errors import ConfigError
from oneiric_session.tracking.destination import Tuning
from oneiric_session.tracking.limits import Limits

REPO = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, env: dict[str, str] | None = None, **overrides: Any):
    return load_config(
        tmp_path, overrides={k.replace("__", "."): v for k, v in overrides.items()}, environ=env or {}
    )


# PLAN.md: (setting, default, lowest allowed, highest allowed, open lower bound)
RANGES = [
    ("retry.attempts", 3, 1, 20, False),
    ("retry.wait_min_seconds", 0.5, 0, 300, False),
    ("retry.wait_max_seconds", 30, 0, 3600, False),
    ("retry.multiplier", 2, 1, 10, False),
    ("breaker.threshold", 5, 1, 1000, False),
    ("breaker.reset_seconds", 60, 0, 86400, False),
    ("timeouts.connect_seconds", 20, 0, 600, True),
    ("timeouts.call_seconds", 30, 0, 600, True),
    ("exit_wait_seconds", 2.0, 0, 60, False),
    ("spool.max_rows", 10000, 1, 10_000_000, False),
    ("spool.max_bytes", 67108864, 65536, 10737418240, False),
    ("spool.max_age_days", 30, 0, 3650, True),
    ("agent.idle_exit_seconds", 300, 1, 86400, False),
    ("limits.max_string_chars", 1024, 16, 65536, False),
    ("limits.max_metadata_bytes", 16384, 256, 1048576, False),
    ("limits.max_metadata_depth", 8, 1, 64, False),
    ("limits.max_component_chars", 64, 1, 64, False),
]


def _get(settings: BaseModel, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize(("name", "default", "low", "high", "open_low"), RANGES, ids=[r[0] for r in RANGES])
def test_defaults_and_ranges(
    tmp_path: Path, name: str, default: float, low: float, high: float, open_low: bool
):
    """Each bounded setting has PLAN.md's default and accepts exactly its range."""
    current = _get(load(tmp_path).settings, name)
    assert current == default
    # wait_min must stay <= wait_max, so the upper end of wait_min is tried with a large wait_max
    extra = {"retry.wait_max_seconds": 3600} if name == "retry.wait_min_seconds" else {}
    extra = {"retry.wait_min_seconds": 0} if name == "retry.wait_max_seconds" else extra
    step = 1 if isinstance(current, int) else 0.001  # just outside the range
    accepted = [high] if open_low else [low, high]
    for value in accepted:
        assert (
            _get(load_config(tmp_path, overrides={name: value, **extra}, environ={}).settings, name) == value
        )
    for value in ([low] if open_low else [low - step]) + [high + step]:
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            load_config(tmp_path, overrides={name: value, **extra}, environ={})


def test_other_defaults(tmp_path: Path) -> None:
    s = load(tmp_path).settings
    assert (s.provider, s.transport, s.url, s.session_buddy_path) == ("session-buddy", "stdio", None, None)
    assert (s.server.command, s.server.args, s.server.env, s.server.cwd) == (None, [], {}, None)
    assert (s.spool.path, s.token_env, s.token_file, s.report_cwd) == (
        None,
        "SESSION_BUDDY_TOKEN",
        None,
        None,
    )


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for name, info in model.model_fields.items():
        found.append((prefix + name, info))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _fields(annotation, f"{prefix}{name}.")
    return found


def test_every_setting_has_a_one_line_description() -> None:
    for name, info in _fields(SessionBuddySettings):
        assert info.description and "\n" not in info.description, name


def test_light_path_name_lists_match_the_model() -> None:
    """sources.py (no pydantic) keeps its own lists of setting names: they must match the model."""
    assert set(SessionBuddySettings.model_fields) == sources.SETTING_NAMES
    structured = {
        name for name, info in _fields(SessionBuddySettings) if info.annotation in (list[str], dict[str, str])
    }
    sections = {
        name for name, info in SessionBuddySettings.model_fields.items() if "Settings" in str(info.annotation)
    }
    assert structured | sections == sources.JSON_SETTINGS


def test_example_settings_file_loads(tmp_path: Path) -> None:
    """The settings/adapters.yml a newcomer copies is valid and selects session-buddy."""
    config = load_config(REPO / "settings", environ={})
    assert config.provider == "session-buddy"
    assert config.sources["provider"] == f"file:{REPO / 'settings' / 'adapters.yml'}"


def test_destination_defaults_to_the_bundled_server(tmp_path: Path) -> None:
    destination = load(tmp_path, {"ONEIRIC_SESSION_DB": str(tmp_path / "s.sqlite3")}).destination()
    assert (destination.transport, destination.command) == ("stdio", sys.executable)
    assert destination.args == ("-m", "oneiric_session", "serve", "--db", str(tmp_path / "s.sqlite3"))
    assert destination.tuning == Tuning()


def test_bundled_server_database_is_part_of_the_destination(tmp_path: Path) -> None:
    """Shells with different ONEIRIC_SESSION_DB are different destinations (never one shared server)."""
    one = load(tmp_path, {"ONEIRIC_SESSION_DB": str(tmp_path / "one.sqlite3")}).destination()
    two = load(tmp_path, {"ONEIRIC_SESSION_DB": str(tmp_path / "two.sqlite3")}).destination()
    assert one.key != two.key and one.args[-1] == str(tmp_path / "one.sqlite3")


def test_explicit_session_buddy_path_outranks_a_configured_command(tmp_path: Path) -> None:
    env = {"ONEIRIC_SESSION_SERVER__COMMAND": "sb-serve"}
    assert load(tmp_path, env).destination().command == "sb-serve"
    explicit = load(tmp_path, env, session_buddy_path="/opt/sb").destination()
    assert (explicit.command, explicit.args[:2]) == ("uv", ("--directory", "/opt/sb"))


def test_destination_from_session_buddy_path(tmp_path: Path) -> None:
    destination = load(tmp_path, {"SESSION_BUDDY_PATH": "/opt/session-buddy"}).destination()
    assert destination.command == "uv"
    assert destination.args == (
        "--directory",
        "/opt/session-buddy",
        "run",
        "python",
        "-c",
        SESSION_BUDDY_STDIO_CODE,
    )


def test_destination_from_server_command_wins_over_session_buddy_path(tmp_path: Path) -> None:
    env = {
        "SESSION_BUDDY_PATH": "/opt/sb",
        "ONEIRIC_SESSION_SERVER__COMMAND": "sb-serve",
        "ONEIRIC_SESSION_SERVER__ARGS": '["--stdio"]',
        "ONEIRIC_SESSION_SERVER__ENV": '{"B": "2", "A": "1"}',
        "ONEIRIC_SESSION_SERVER__CWD": "/srv",
    }
    destination = load(tmp_path, env).destination()
    assert (destination.command, destination.args, destination.cwd) == ("sb-serve", ("--stdio",), "/srv")
    assert destination.env == (("A", "1"), ("B", "2"))


def test_destination_http_and_tuning(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        transport="http",
        url="http://127.0.0.1:9/mcp",
        retry={"attempts": 4, "wait_min_seconds": 1, "wait_max_seconds": 8, "multiplier": 3},
        breaker={"threshold": 2, "reset_seconds": 5},
        timeouts={"connect_seconds": 3, "call_seconds": 4},
    )
    destination = config.destination()
    assert (destination.transport, destination.url) == ("http", "http://127.0.0.1:9/mcp")
    assert destination.tuning == Tuning(4, 1, 8, 3, 2, 5, 3, 4)


def test_limits(tmp_path: Path) -> None:
    assert load(tmp_path).limits() == Limits()
    assert load(tmp_path, limits={"max_component_chars": 10}).limits().max_component_chars == 10


def test_spool_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load(tmp_path).spool_path() == tmp_path / "state" / "oneiric-session" / "spool.sqlite3"
    assert load(tmp_path, spool__path=str(tmp_path / "s.db")).spool_path() == tmp_path / "s.db"


def test_token_from_env_or_file(tmp_path: Path) -> None:
    assert load(tmp_path).token() is None
    assert load(tmp_path, {"SESSION_BUDDY_TOKEN": "abc"}).token() == "abc"
    assert load(tmp_path, {"MY_TOKEN": "xyz"}, token_env="MY_TOKEN").token() == "xyz"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    os.chmod(token_file, 0o600)
    assert load(tmp_path, token_file=str(token_file)).token() == "from-file"
    assert (
        load(tmp_path, {"SESSION_BUDDY_TOKEN": "env-wins"}, token_file=str(token_file)).token() == "env-wins"
    )


def test_repr_never_shows_the_token(tmp_path: Path) -> None:
    config = load(tmp_path, {"SESSION_BUDDY_TOKEN": "tok-5ecret-981"})
    assert config.token() == "tok-5ecret-981"
    assert "5ecret" not in repr(config) and "5ecret" not in str(config.values())


def test_values_redact_secrets(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        server={"env": {"SESSION_BUDDY_SECRET": "sec-4410", "PYTHONPATH": "/lib"}},
        url="http://me:pw-123@host:8/mcp",
    )
    values = config.values()
    assert values["server.env.SESSION_BUDDY_SECRET"] == "<redacted>"
    assert values["server.env.PYTHONPATH"] == "/lib"
    assert values["url"] == "http://me:<redacted>@host:8/mcp"
    assert "sec-4410" not in repr(config)
