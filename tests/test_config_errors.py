"""Configuration errors a person can act on: file and line, variable and setting, never a secret."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.errors import ConfigError
from oneiric_session.tracking.registry import build_tracker, resolve_tracker


def settings_dir(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "settings"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text)
    return directory


def error_of(directory: Path, env: dict[str, str] | None = None, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(directory, environ=env or {}, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line: the shell logs it as one line
    return message


@pytest.mark.parametrize("name", ["adapters.yml", "oneiric.yaml", "local.yaml"])
def test_bad_yaml_names_file_and_line(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "settings"
    directory.mkdir()
    (directory / name).write_text("adapters:\n  selections:\n    session_tracker: [noop\n  other: 1\n")
    message = error_of(directory)
    assert str(directory / name) in message
    assert "line 4" in message
    assert "invalid YAML" in message


def test_bad_yaml_in_oneiric_config_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("adapters: {selections: {session_tracker: noop}\n")
    message = error_of(settings_dir(tmp_path), {"ONEIRIC_CONFIG": str(path)})
    assert str(path) in message and "line 2" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path, adapters_yml="- noop\n- memory\n"))
    assert "adapters.yml" in message and "mapping" in message


def test_provider_settings_must_be_a_mapping(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path, adapters_yml="provider_settings:\n  session-buddy: 3\n")
    assert "provider_settings.session-buddy must be a mapping" in error_of(directory)


def test_flat_selection_must_be_a_name(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path, adapters_yml="session_tracker: {provider: noop}\n"))
    assert "session_tracker must be a provider name" in message


def test_unknown_provider_is_named_with_the_registered_ones(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path, adapters_yml="session_tracker: sesion-buddy\n")
    with pytest.raises(ConfigError) as info:
        build_tracker(directory, environ={})
    message = str(info.value)
    assert "'sesion-buddy'" in message
    assert "memory, noop, session-buddy" in message
    assert str(directory / "adapters.yml") in message


def test_wrong_type_from_env_names_the_variable(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path), {"ONEIRIC_SESSION_RETRY__ATTEMPTS": "many"})
    assert message.startswith("retry.attempts: ")
    assert "valid integer" in message and "'many'" in message
    assert "environment variable ONEIRIC_SESSION_RETRY__ATTEMPTS" in message


def test_out_of_range_from_file_names_the_file(tmp_path: Path) -> None:
    directory = settings_dir(
        tmp_path, adapters_yml="provider_settings:\n  session-buddy:\n    breaker: {threshold: 0}\n"
    )
    message = error_of(directory)
    assert message.startswith("breaker.threshold: Input should be greater than or equal to 1")
    assert f"file {directory / 'adapters.yml'}" in message


def test_wrong_type_from_oneiric_yaml(tmp_path: Path) -> None:
    text = "adapters:\n  provider_settings:\n    session-buddy:\n      transport: carrier-pigeon\n"
    directory = settings_dir(tmp_path, oneiric_yaml=text)
    message = error_of(directory)
    assert "transport:" in message and "'stdio' or 'http'" in message
    assert str(directory / "oneiric.yaml") in message


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    """A typo is caught, not silently ignored."""
    directory = settings_dir(
        tmp_path, adapters_yml="provider_settings:\n  session-buddy:\n    retry: {atempts: 3}\n"
    )
    message = error_of(directory)
    assert message.startswith("retry.atempts: unknown setting") and "from file " in message


def test_unknown_section_names_the_file(tmp_path: Path) -> None:
    """A misspelled section is traced to the file that holds it, not to the defaults."""
    yaml_text = "provider_settings:\n  session-buddy:\n    retri: {attempts: 3}\n"
    directory = settings_dir(tmp_path, adapters_yml=yaml_text)
    message = error_of(directory)
    assert message.startswith("retri: unknown setting")
    assert f"from file {directory / 'adapters.yml'}" in message


def test_invalid_json_in_env(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path), {"ONEIRIC_SESSION_SERVER__ARGS": "[-m x]"})
    assert "server.args: expected JSON" in message and "ONEIRIC_SESSION_SERVER__ARGS" in message


def test_argument_errors_say_argument(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path), overrides={"exit_wait_seconds": 61})
    assert message.startswith("exit_wait_seconds: Input should be less than or equal to 60")
    assert message.endswith("from argument")


def test_several_errors_in_one_line(tmp_path: Path) -> None:
    env = {"ONEIRIC_SESSION_RETRY__ATTEMPTS": "0", "ONEIRIC_SESSION_AGENT__IDLE_EXIT_SECONDS": "0"}
    message = error_of(settings_dir(tmp_path), env)
    assert "retry.attempts" in message and "agent.idle_exit_seconds" in message


def test_http_needs_url(tmp_path: Path) -> None:
    message = error_of(settings_dir(tmp_path), {"ONEIRIC_SESSION_TRANSPORT": "http"})
    assert "url: required when transport is 'http'" in message
    assert "ONEIRIC_SESSION_TRANSPORT" in message


def test_wait_min_above_wait_max(tmp_path: Path) -> None:
    env = {"ONEIRIC_SESSION_RETRY__WAIT_MIN_SECONDS": "40"}
    message = error_of(settings_dir(tmp_path), env)
    assert "retry.wait_min_seconds (40.0) is greater than retry.wait_max_seconds (30.0)" in message


def test_secret_server_env_values_never_appear(tmp_path: Path) -> None:
    """A wrong value under a secret-looking server.env name is not echoed."""
    env = {"ONEIRIC_SESSION_SERVER__ENV": '{"API_TOKEN": 918273645}'}
    message = error_of(settings_dir(tmp_path), env)
    assert "server.env.API_TOKEN" in message and "918273645" not in message


SECRET = "s3cr3t-d0-n0t-pr1nt"


@pytest.mark.parametrize(
    ("text", "env"),
    [
        (f"provider_settings:\n  session-buddy:\n    token: {SECRET}\n", {}),
        (f"provider_settings:\n  session-buddy:\n    server: {{SESSION_BUDDY_SECRET: {SECRET}}}\n", {}),
        ("", {"ONEIRIC_SESSION_SERVER__SESSION_BUDDY_SECRET": SECRET}),
    ],
    ids=["token_in_a_file", "secret_under_server", "secret_under_server_from_env"],
)
def test_a_secret_put_where_no_setting_is_never_echoed(
    tmp_path: Path, text: str, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The token in a settings file, a server secret under `server:` rather than `server.env:`: the
    unknown setting is named, its value never shown (the shell's warning line, `status`, `check`)."""
    directory = settings_dir(tmp_path, adapters_yml=text)
    message = error_of(directory, env)
    assert "unknown setting" in message and SECRET not in message
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        assert type(resolve_tracker(directory, environ=env)).__name__ == "NoopTracker"
    assert "unknown setting" in caplog.text and SECRET not in caplog.text


def test_a_settings_key_holding_escapes_reaches_no_terminal(tmp_path: Path) -> None:
    """A key of any settings file is quoted in the error (the shell's one warning line): its escape
    sequences and line breaks are removed, whoever prints it."""
    key = '"\\e]0;owned\\a\\e[2J\\nsecond line"'  # YAML escapes: a title, a clear screen, a break
    message = error_of(
        settings_dir(tmp_path, adapters_yml=f"provider_settings:\n  session-buddy:\n    {key}: 1\n")
    )
    assert "unknown setting" in message
    assert not any(char in message for char in "\x1b\x07\n"), repr(message)


def test_token_file_must_be_owner_only(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token-value\n")
    os.chmod(token_file, 0o644)
    config = load_config(settings_dir(tmp_path), environ={"ONEIRIC_SESSION_TOKEN_FILE": str(token_file)})
    with pytest.raises(ConfigError) as info:
        config.token()
    message = str(info.value)
    assert "chmod 600" in message and "644" in message and "ONEIRIC_SESSION_TOKEN_FILE" in message
    assert "s3cr3t" not in message


def test_missing_token_file(tmp_path: Path) -> None:
    config = load_config(settings_dir(tmp_path), overrides={"token_file": str(tmp_path / "none")}, environ={})
    with pytest.raises(ConfigError, match="cannot read it"):
        config.token()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"ONEIRIC_SESSION_SERVER__COMMAND": "./serve"}, "server.command"),
        ({"ONEIRIC_SESSION_SERVER__COMMAND": "bin/serve"}, "server.command"),
        ({"ONEIRIC_SESSION_SERVER__COMMAND": "python3", "ONEIRIC_SESSION_SERVER__CWD": "work"}, "server.cwd"),
        ({"SESSION_BUDDY_PATH": "checkouts/session-buddy"}, "session_buddy_path"),
        ({"ONEIRIC_SESSION_SPOOL__PATH": "spool.sqlite3"}, "spool.path"),
        ({"ONEIRIC_SESSION_DB": "sessions.sqlite3"}, "ONEIRIC_SESSION_DB"),
    ],
)
def test_a_relative_path_the_agent_would_use_is_refused(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    """The agent runs in /, started by whichever shell came first: `./serve` worked for `check` in
    the shell's directory and was never found by the agent, so its events waited for ever."""
    message = error_of(settings_dir(tmp_path), env)
    assert message.startswith(f"{name}: ") and "relative path" in message and "runs in /" in message


def test_paths_the_agent_can_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program name found on PATH, `~` expanded, a relative command under an absolute server.cwd."""
    monkeypatch.setenv("HOME", str(tmp_path))
    directory = settings_dir(tmp_path)
    for env, command, cwd in [
        ({"ONEIRIC_SESSION_SERVER__COMMAND": "python3"}, "python3", None),
        ({"ONEIRIC_SESSION_SERVER__COMMAND": "~/bin/serve"}, f"{tmp_path}/bin/serve", None),
        (
            {"ONEIRIC_SESSION_SERVER__COMMAND": "bin/serve", "ONEIRIC_SESSION_SERVER__CWD": "~/work"},
            "bin/serve",
            f"{tmp_path}/work",
        ),
    ]:
        destination = load_config(directory, environ=env).destination()
        assert (destination.command, destination.cwd) == (command, cwd)
    # Relative paths the launch line in use does not take are nobody's business (an environment's
    # SESSION_BUDDY_PATH beside a server.command turned tracking off).
    unused = {
        "ONEIRIC_SESSION_SERVER__COMMAND": "python3",
        "SESSION_BUDDY_PATH": "sb",
        "ONEIRIC_SESSION_DB": "x",
    }
    assert load_config(directory, environ=unused).destination().command == "python3"
    http = {
        "ONEIRIC_SESSION_TRANSPORT": "http",
        "ONEIRIC_SESSION_URL": "http://h/mcp",
        "ONEIRIC_SESSION_DB": "x",
    }
    assert (
        load_config(directory, environ=http).destination().transport == "http"
    )  # no launch line: no database


def test_a_relative_settings_dir_in_a_deleted_directory_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It raised FileNotFoundError (a traceback in `status`, "tracking is off: FileNotFoundError"
    in a shell); the default ./settings there simply reads as absent."""
    from oneiric_session.config.sources import NO_SETTINGS_DIR

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    message = error_of(Path("settings"))
    assert message == (
        "settings directory (from --settings) is relative, and the working directory no longer exists: "
        "'settings'"
    )
    assert load_config(environ={}).settings_dir == NO_SETTINGS_DIR


def test_a_relative_oneiric_config_in_a_deleted_directory_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`$ONEIRIC_CONFIG=oneiric.yaml` in a deleted working directory: FileNotFoundError, a traceback
    in `status` and "tracking is off: FileNotFoundError" in a shell (review J)."""
    settings = tmp_path / "settings"
    settings.mkdir()
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    message = error_of(settings, {"ONEIRIC_CONFIG": "oneiric.yaml"})
    assert message == (
        "environment variable ONEIRIC_CONFIG is relative, and the working directory no longer exists: "
        "'oneiric.yaml'"
    )
    # The reason before the value, which is cut short: a long one hid the reason (review K).
    message = error_of(settings, {"ONEIRIC_CONFIG": "x" * 3000})
    assert message.startswith("environment variable ONEIRIC_CONFIG is relative, and the working directory")
    assert len(message) < 400
    # Oneiric's per-user directory, relative there too, is one nothing can be read from (review K).
    for env in ({"XDG_CONFIG_HOME": "relative-config"}, {"HOME": "relative-home"}):
        assert load_config(settings, environ=env).provider == "session-buddy"


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (
            "--settings",
            "settings directory (from --settings) names a home directory ('~') this system does not know",
        ),
        (
            "ONEIRIC_CONFIG",
            "environment variable ONEIRIC_CONFIG names a home directory ('~') this system does not",
        ),
        ("ONEIRIC_SESSION_SPOOL__PATH", "spool.path: names a home directory ('~') this system does not know"),
        ("ONEIRIC_SESSION_TOKEN_FILE", "token_file: names a home directory ('~') this system does not know"),
    ],
)
def test_the_home_of_an_unknown_user_is_a_configuration_error(
    tmp_path: Path, where: str, expected: str
) -> None:
    """`~nosuchuser/...` raised RuntimeError where the path was expanded: a traceback in `status`,
    "tracking is off: RuntimeError" in a shell (review K)."""
    settings = tmp_path / "settings"
    settings.mkdir()
    value = "~oneiric-session-no-such-user/x"
    message = error_of(Path(value)) if where == "--settings" else error_of(settings, {where: value})
    assert message.startswith(expected)
    assert "oneiric-session-no-such-user" in message


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ONEIRIC_SESSION_SPOOL", '{"path": "/tmp/a\\u0000b"}', "spool.path"),
        ("ONEIRIC_SESSION_TOKEN_FILE", "/tmp/a\x00b", "token_file"),
        ("ONEIRIC_SESSION_SERVER", '{"command": "/tmp/a\\u0000b"}', "server.command"),
        ("ONEIRIC_SESSION_SERVER", '{"args": ["-m", "x\\u0000y"]}', "server.args"),
        ("ONEIRIC_SESSION_SERVER", '{"cwd": "/tmp/a\\u0000b"}', "server.cwd"),
        (
            "ONEIRIC_SESSION_SERVER",
            '{"env": {"SECRET_TOKEN": "x\\u0000secret-value"}}',
            "server.env.SECRET_TOKEN",
        ),
        ("ONEIRIC_SESSION_SERVER", '{"env": {"A\\u0000B": "x"}}', "server.env"),
    ],
)
def test_a_nul_character_in_a_setting_is_a_configuration_error(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    """A NUL passed validation and raised ValueError where the value was used: `status` printed a
    traceback, a shell lost every event ("embedded null byte"), an agent retried a server cwd or
    env for ever (review L). The value is never shown: it may be a secret."""
    settings = tmp_path / "settings"
    settings.mkdir()
    message = error_of(settings, {variable: value})
    assert message.startswith(f"{named}: ")
    assert "NUL character" in message
    assert "secret-value" not in message


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ONEIRIC_SESSION_SERVER", '{"cwd": "~oneiric-session-no-such-user/x"}', "server.cwd"),
        ("ONEIRIC_SESSION_SESSION_BUDDY_PATH", "~oneiric-session-no-such-user/x", "session_buddy_path"),
    ],
)
def test_an_agent_path_naming_an_unknown_users_home_says_so(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    """It was refused as "a relative path" (review L)."""
    settings = tmp_path / "settings"
    settings.mkdir()
    message = error_of(settings, {variable: value})
    assert message.startswith(
        f"{named}: '~oneiric-session-no-such-user/x' names a home directory ('~') this system does not know"
    )
