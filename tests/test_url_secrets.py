"""Secrets in a url (its password, its query values named like secrets), and paths given with a
leading `./~`: review P's defects, each test failing before its fix.

A query secret reaches the server exactly as written, is never written to disk nor shown (its
name is read percent-decoded, as a server reads it), and is scrubbed from what a server says in
either form; a setting's `./~x` stays a file here wherever it is used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.url_rules import secret_named


def _through_disk(url: str) -> tuple[Destination, Destination]:
    """(what the shell configured, what the agent delivers to: read back from disk, secrets filled)."""
    shell = Destination(transport="http", url=url)
    agent = Destination.from_json(shell.to_json()).with_secrets(shell.secrets())
    return shell, agent


# -- 1. a repeated secret query parameter: the agent sends the last value in every place ----------


def test_a_repeated_secret_query_parameter_reaches_the_server_as_written() -> None:
    url = "http://h/mcp?token=first-secret&token=second-secret"
    _shell, agent = _through_disk(url)
    assert agent.url == url


# -- 2. a percent-encoded secret name: written to disk and shown ----------------------------------


def test_a_percent_encoded_secret_query_name_is_not_written_to_disk() -> None:
    """`?t%6Fken=` is `?token=` to every server (names are percent-decoded)."""
    shell = Destination(transport="http", url="http://h/mcp?t%6Fken=S3CRET-VALUE-0123456789")
    assert "S3CRET-VALUE" not in shell.to_json()
    assert "S3CRET-VALUE" not in shell.describe()


# -- 3. token_file './~nobody/token' (a file here): the shell's tracker expands it again -----------


def test_a_token_file_dot_slash_tilde_unknown_user_does_not_turn_tracking_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from oneiric_session.tracking.registry import resolve_tracker
    from tests.support.delivery import Scene

    scene = Scene(tmp_path)  # (a `./~x` token_file: the shell's check of its type expanded it again)
    here = tmp_path / "~no-such-user-rp"
    here.mkdir()
    (here / "token").write_text("T0KEN\n")
    os.chmod(here / "token", 0o600)
    monkeypatch.chdir(tmp_path)
    env = {
        **scene.env,
        "ONEIRIC_SESSION_TOKEN_FILE": "./~no-such-user-rp/token",
        "ONEIRIC_SESSION_PROVIDER": "session-buddy",
    }
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        tracker = resolve_tracker(environ=env)
    assert type(tracker).__name__ != "NoopTracker", caplog.text


# -- 4. a percent-encoded secret query value: the server's echo of it (decoded) is not scrubbed ----


def test_a_servers_echo_of_a_percent_encoded_query_secret_is_scrubbed() -> None:
    """A base64 token in a query must be written with `+` as %2B; the server sees (and may echo)
    the decoded value, and `_scrub` looks only for the form as written."""
    from oneiric_session.transport.connection import Connection

    token = "AbC+dEf/GhI+jKl/MnO0123456789=="
    url = "http://h/mcp?access_token=" + token.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    connection = Connection(Destination(transport="http", url=url))
    said = connection.scrub(f"unauthorized: access_token {token} is not valid")
    assert token not in said, said


# -- 5. a relative spool.path is shown as './<what was given>' ------------------------------------


def test_a_percent_encoded_secret_query_name_is_not_stored_under_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As test_a_secret_in_the_url_is_not_stored_at_rest[query], the name spelled `access_t%6Fken`
    (every server reads it as access_token)."""
    from tests.support.delivery import Scene, wait_until
    from tests.support.http_server import HttpServer

    server = HttpServer(tmp_path / "server")
    (tmp_path / "server").mkdir()
    secret = "url-query-secret-" + "0123456789abcdef" * 2
    scene = Scene(tmp_path, transport="http", url=f"{server.url}?access_t%6Fken={secret}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", scene.env["XDG_RUNTIME_DIR"])
    server.start()
    try:
        scene.run_shell(1)
        wait_until(lambda: len(server.rows()) == 1 and scene.depth() == 0, what="delivery over http")
        holding = [
            str(p.relative_to(tmp_path))
            for p in (tmp_path / "state").rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        shown = secret in scene.run("status").stdout
        assert not holding and not shown, (holding, shown)
    finally:
        scene.stop_agents()
        server.kill()


def test_each_secret_is_named_in_a_message_as_the_user_wrote_it() -> None:
    shell = Destination(transport="http", url="http://u:p@h/mcp?token=a&x=1&api%5Fkey=b")
    names = sorted(secret_named(name) for name in shell.secrets())
    assert names == ["the url's api%5Fkey", "the url's password", "the url's token"]
    assert secret_named("DB_PASSWORD") == "server.env DB_PASSWORD"
    at_rest = Destination.from_json(shell.to_json())
    assert sorted(at_rest.missing_secrets()) == sorted(shell.secrets())
    assert at_rest.key == shell.key and at_rest.with_secrets(shell.secrets()).url == shell.url
