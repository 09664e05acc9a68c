"""Layering of CONTRACT.md section 2: every precedence pair, every file shape, the environment."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from oneiric_session.config import sources
from oneiric_session.config.loader import load_config
from oneiric_session.errors import ConfigError


class Setup:
    """A settings directory, an environment and explicit arguments, built per test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "settings"
        self.dir.mkdir()
        self.env: dict[str, str] = {"XDG_CONFIG_HOME": str(root / "xdg-config")}
        self.overrides: dict[str, Any] = {}

    def write(self, name: str, data: Any) -> Path:
        path = self.dir / name if "/" not in name else self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path

    def read(self) -> sources.Merged:
        return sources.read(self.dir, overrides=self.overrides, environ=self.env)

    def load(self):
        return load_config(self.dir, overrides=self.overrides, environ=self.env)


def oneiric_shape(provider: str | None = None, **settings: Any) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if provider:
        section["selections"] = {"session_tracker": provider}
    if settings:
        section["provider_settings"] = {"session-buddy": settings}
    return {"adapters": section}


# Each layer, lowest precedence first: (name, set provider, set retry.attempts or None, expected source).
def _oneiric_file(name: str) -> Callable[[Setup, str], str]:
    def provider(s: Setup, value: str) -> str:
        return f"file:{s.write(name, oneiric_shape(value))}"

    return provider


def _oneiric_file_attempts(name: str) -> Callable[[Setup, int], str]:
    def attempts(s: Setup, value: int) -> str:
        return f"file:{s.write(name, oneiric_shape(retry={'attempts': value}))}"

    return attempts


def _config_env(s: Setup, data: dict[str, Any]) -> str:
    path = s.write("elsewhere/oneiric-config.yaml", data)
    s.env["ONEIRIC_CONFIG"] = str(path)
    return f"file:{path}"


def _set_env(s: Setup, var: str, value: Any) -> str:
    s.env[var] = str(value)
    return f"env:{var}"


def _set_argument(s: Setup, name: str, value: Any) -> str:
    s.overrides[name] = value
    return "argument"


LAYERS: list[tuple[str, Callable[[Setup, str], str], Callable[[Setup, int], str] | None]] = [
    ("oneiric.yaml", _oneiric_file("oneiric.yaml"), _oneiric_file_attempts("oneiric.yaml")),
    ("local.yaml", _oneiric_file("local.yaml"), _oneiric_file_attempts("local.yaml")),
    (
        "$XDG_CONFIG_HOME/oneiric/config.yaml",
        _oneiric_file("xdg-config/oneiric/config.yaml"),
        _oneiric_file_attempts("xdg-config/oneiric/config.yaml"),
    ),
    (
        "$XDG_CONFIG_HOME/oneiric/local.yaml",
        _oneiric_file("xdg-config/oneiric/local.yaml"),
        _oneiric_file_attempts("xdg-config/oneiric/local.yaml"),
    ),
    (
        "$ONEIRIC_CONFIG",
        lambda s, v: _config_env(s, oneiric_shape(v)),
        lambda s, v: _config_env(s, oneiric_shape(retry={"attempts": v})),
    ),
    (
        "adapters.yml",
        lambda s, v: f"file:{s.write('adapters.yml', {'session_tracker': v})}",
        lambda s, v: f"file:{s.write('adapters.yml', oneiric_shape(retry={'attempts': v})['adapters'])}",
    ),
    ("ONEIRIC_ADAPTERS__SELECTIONS__*", lambda s, v: _set_env(s, sources.ONEIRIC_SELECTION_ENV, v), None),
    (
        "ONEIRIC_SESSION_*",
        lambda s, v: _set_env(s, "ONEIRIC_SESSION_PROVIDER", v),
        lambda s, v: _set_env(s, "ONEIRIC_SESSION_RETRY__ATTEMPTS", v),
    ),
    (
        "argument",
        lambda s, v: _set_argument(s, "provider", v),
        lambda s, v: _set_argument(s, "retry.attempts", v),
    ),
]
PAIRS = list(itertools.combinations(range(len(LAYERS)), 2))


@pytest.mark.parametrize(("low", "high"), PAIRS, ids=[f"{LAYERS[a][0]}<{LAYERS[b][0]}" for a, b in PAIRS])
def test_provider_selection_precedence_pair(tmp_path: Path, low: int, high: int) -> None:
    """Of two layers selecting a provider, the higher one wins and is named as the source."""
    setup = Setup(tmp_path)
    LAYERS[low][1](setup, "from-low")
    expected_source = LAYERS[high][1](setup, "from-high")
    assert setup.read().selection() == ("from-high", expected_source)


ATTEMPT_LAYERS = [i for i, layer in enumerate(LAYERS) if layer[2] is not None]
ATTEMPT_PAIRS = list(itertools.combinations(ATTEMPT_LAYERS, 2))


@pytest.mark.parametrize(
    ("low", "high"), ATTEMPT_PAIRS, ids=[f"{LAYERS[a][0]}<{LAYERS[b][0]}" for a, b in ATTEMPT_PAIRS]
)
def test_nested_setting_precedence_pair(tmp_path: Path, low: int, high: int) -> None:
    """A nested setting (retry.attempts) follows the same order, validated, with its source."""
    setup = Setup(tmp_path)
    LAYERS[low][2](setup, 7)
    expected_source = LAYERS[high][2](setup, 9)
    config = setup.load()
    assert config.settings.retry.attempts == 9
    assert config.sources["retry.attempts"] == expected_source


def test_defaults_have_source_default(tmp_path: Path) -> None:
    """With no files and no variables, everything is a default and the provider is session-buddy."""
    config = Setup(tmp_path).load()
    assert config.provider == "session-buddy"
    assert set(config.sources.values()) == {"default"}


def test_layers_merge_deeply_and_keep_each_source(tmp_path: Path) -> None:
    """A variable changing one retry field keeps the file's other retry fields and their source."""
    setup = Setup(tmp_path)
    path = setup.write("adapters.yml", oneiric_shape(retry={"attempts": 4, "multiplier": 3}))
    setup.env["ONEIRIC_SESSION_RETRY__ATTEMPTS"] = "6"
    config = setup.load()
    assert (config.settings.retry.attempts, config.settings.retry.multiplier) == (6, 3)
    assert config.sources["retry.attempts"] == "env:ONEIRIC_SESSION_RETRY__ATTEMPTS"
    assert config.sources["retry.multiplier"] == f"file:{path}"
    assert config.sources["retry.wait_min_seconds"] == "default"


@pytest.mark.parametrize(
    "data",
    [
        {"session_tracker": "memory", "cache": "redis"},
        {"adapters": {"selections": {"session_tracker": "memory"}}},
        {"selections": {"session_tracker": "memory"}},
    ],
    ids=["flat", "oneiric-adapters", "bare-section"],
)
def test_adapters_yml_shapes_select(tmp_path: Path, data: dict[str, Any]) -> None:
    """All three shapes of adapters.yml select the provider."""
    setup = Setup(tmp_path)
    path = setup.write("adapters.yml", data)
    assert setup.read().selection() == ("memory", f"file:{path}")


@pytest.mark.parametrize("wrapped", [True, False], ids=["oneiric-adapters", "bare-section"])
def test_adapters_yml_provider_settings(tmp_path: Path, wrapped: bool) -> None:
    """provider_settings.session-buddy feeds the settings in both Oneiric shapes."""
    section = {
        "selections": {"session_tracker": "session-buddy"},
        "provider_settings": {
            "session-buddy": {"server": {"command": "sb", "args": ["-x"]}, "breaker": {"threshold": 3}},
            "other-provider": {"ignored": True},
        },
    }
    setup = Setup(tmp_path)
    setup.write("adapters.yml", {"adapters": section} if wrapped else section)
    settings = setup.load().settings
    assert (settings.server.command, settings.server.args, settings.breaker.threshold) == ("sb", ["-x"], 3)


def test_flat_adapters_yml_for_other_categories_selects_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.write("adapters.yml", {"cache": "redis"})
    assert setup.read().selection() == ("session-buddy", "default")


def test_oneiric_yaml_reads_only_its_adapters_section(tmp_path: Path) -> None:
    """Oneiric's own settings (app, logging...) are ignored; its adapters section is used."""
    setup = Setup(tmp_path)
    setup.write("oneiric.yaml", {"app": {"name": "demo"}, **oneiric_shape("noop", exit_wait_seconds=5)})
    config = setup.load()
    assert (config.provider, config.settings.exit_wait_seconds) == ("noop", 5)


def test_oneiric_yml_spelling_is_read(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    path = setup.write("oneiric.yml", oneiric_shape("memory"))
    assert setup.read().selection() == ("memory", f"file:{path}")


def test_oneiric_config_json_file(tmp_path: Path) -> None:
    """$ONEIRIC_CONFIG may name a JSON file, as in Oneiric."""
    setup = Setup(tmp_path)
    path = tmp_path / "oneiric.json"
    path.write_text(json.dumps(oneiric_shape("memory")))
    setup.env["ONEIRIC_CONFIG"] = str(path)
    assert setup.read().selection() == ("memory", f"file:{path}")


def test_oneiric_config_missing_file_is_listed_absent(tmp_path: Path) -> None:
    """Like Oneiric, a missing $ONEIRIC_CONFIG file is skipped; status shows it as absent."""
    setup = Setup(tmp_path)
    setup.env["ONEIRIC_CONFIG"] = str(tmp_path / "nope.yaml")
    merged = setup.read()
    assert (tmp_path / "nope.yaml", False) in merged.files
    assert merged.selection() == ("session-buddy", "default")


def test_oneiric_config_directory_is_an_error(tmp_path: Path) -> None:
    """$ONEIRIC_CONFIG names a file in Oneiric; a directory is refused, not reinterpreted."""
    setup = Setup(tmp_path)
    setup.env["ONEIRIC_CONFIG"] = str(setup.dir)
    with pytest.raises(ConfigError, match="ONEIRIC_CONFIG names a directory"):
        setup.read()


def test_settings_dir_argument_beats_env_beats_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = {}
    for name in ("cwd", "env", "arg"):
        (tmp_path / name / "settings").mkdir(parents=True)
        (tmp_path / name / "settings" / "adapters.yml").write_text(f"session_tracker: {name}\n")
        dirs[name] = tmp_path / name / "settings"
    monkeypatch.chdir(tmp_path / "cwd")
    env = {"ONEIRIC_SESSION_SETTINGS_DIR": str(dirs["env"])}
    assert sources.read(environ={}).selection()[0] == "cwd"
    assert sources.read(environ=env).selection()[0] == "env"
    assert sources.read(dirs["arg"], environ=env).selection()[0] == "arg"


def test_missing_explicit_settings_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        sources.read(tmp_path / "nope", environ={})
    with pytest.raises(ConfigError, match="ONEIRIC_SESSION_SETTINGS_DIR"):
        sources.read(environ={"ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path / "nope")})


def test_env_json_lists_and_dicts(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.env.update(
        {
            "ONEIRIC_SESSION_SERVER__COMMAND": "python3",
            "ONEIRIC_SESSION_SERVER__ARGS": '["-m", "x"]',
            "ONEIRIC_SESSION_SERVER__ENV": '{"A": "1"}',
            "ONEIRIC_SESSION_SERVER__ENV__MixedCase": "kept",
        }
    )
    server = setup.load().settings.server
    assert (server.command, server.args) == ("python3", ["-m", "x"])
    assert server.env == {"A": "1", "MixedCase": "kept"}


def test_env_whole_section_as_json_then_specific_variable_wins(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.env.update(
        {"ONEIRIC_SESSION_RETRY": '{"attempts": 4, "multiplier": 3}', "ONEIRIC_SESSION_RETRY__ATTEMPTS": "5"}
    )
    config = setup.load()
    assert (config.settings.retry.attempts, config.settings.retry.multiplier) == (5, 3)
    assert config.sources["retry.multiplier"] == "env:ONEIRIC_SESSION_RETRY"


def test_non_setting_variables_and_empty_values_are_ignored(tmp_path: Path) -> None:
    """ONEIRIC_SESSION_SETTINGS_DIR/DB are not settings; an empty variable counts as unset."""
    setup = Setup(tmp_path)
    setup.env.update(
        {"ONEIRIC_SESSION_DB": "/x.sqlite3", "ONEIRIC_SESSION_PROVIDER": "", "ONEIRIC_SESSION_SOMETHING": "1"}
    )
    config = setup.load()
    assert config.provider == "session-buddy"
    assert set(config.sources.values()) == {"default"}


def test_session_buddy_path_env_and_session_specific_variable(tmp_path: Path) -> None:
    """SESSION_BUDDY_PATH (Oneiric's variable) is read; ONEIRIC_SESSION_SESSION_BUDDY_PATH beats it."""
    setup = Setup(tmp_path)
    setup.env["SESSION_BUDDY_PATH"] = "/opt/sb"
    assert setup.load().sources["session_buddy_path"] == "env:SESSION_BUDDY_PATH"
    setup.env["ONEIRIC_SESSION_SESSION_BUDDY_PATH"] = "/opt/other"
    assert setup.load().settings.session_buddy_path == "/opt/other"


def test_dotted_and_nested_arguments(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.overrides.update({"retry.attempts": 2, "breaker": {"threshold": 9}})
    config = setup.load()
    assert (config.settings.retry.attempts, config.settings.breaker.threshold) == (2, 9)
    assert config.sources["breaker.threshold"] == "argument"


def test_oneirics_user_config_falls_back_to_home(tmp_path: Path) -> None:
    """Oneiric 0.33 reads ~/.config/oneiric/ when XDG_CONFIG_HOME is unset; so do we."""
    setup = Setup(tmp_path)
    setup.env = {"HOME": str(tmp_path / "home")}
    path = setup.write("home/.config/oneiric/config.yaml", oneiric_shape("memory"))
    assert setup.read().selection() == ("memory", f"file:{path}")
