"""What an older version left in clear, and secrets a url can hold in other forms (review Q).

Before b5b63d2 a url's query secret (`?access_token=...`) was not a secret: a shell cached its
view, url and all, and the agent's errors named the url whole. This version drops such cache
entries and cuts the secret out of those errors (shown by `spool list`, rewritten by `rekey`).
A password with a raw '/', '?' or '#' is refused (it would be read as the host and path), and the
Basic-auth form of the url's credentials is scrubbed from what a server says. Each test failed on
0b4d70e.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
from pathlib import Path

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.errors import ConfigError
from oneiric_session.spool import Spool
from oneiric_session.tracking.destination import Destination
from tests.support.delivery import Scene, wait_until
from tests.support.older_version import older_cache_entry, older_row

SECRET = "upgrade-query-secret-" + "fedcba9876543210" * 2
URL = f"http://127.0.0.1:9/mcp?access_token={SECRET}"


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _holding(root: Path, secret: str) -> list[str]:
    return [
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]


def test_a_cache_entry_an_older_version_wrote_with_a_query_secret_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 3's entry held the url whole; this version never read it again, nor deleted it."""
    scene = Scene(tmp_path, transport="http", url=URL)
    entry = older_cache_entry(scene, monkeypatch, URL)
    try:
        scene.run_shell(1)  # a shell of this version, with that url
        wait_until(lambda: scene.agent_pid() is not None, what="the spawned agent", timeout=30)
    finally:
        scene.stop_agents()  # (its rows can never be delivered: it would never idle out)
    assert not entry.exists()
    assert not _holding(tmp_path / "state", SECRET)


def test_an_error_an_older_version_spooled_with_a_query_secret_is_not_shown(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    older_row(scene, URL, f"no MCP handshake within 1 s from http {URL}")
    listing = scene.run("spool", "list")
    assert "no MCP handshake" in listing.stdout
    assert SECRET not in listing.stdout, listing.stdout
    assert SECRET not in scene.run("spool", "list", "--json").stdout


def test_rekey_cuts_the_secret_out_of_an_older_versions_errors(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    older_row(scene, URL, f"no MCP handshake within 1 s from http {URL}")
    with Spool(scene.spool_path) as spool:
        assert spool.rekey() == 1
        (row,) = spool.list_pending()
        assert (
            row.last_error
            == "no MCP handshake within 1 s from http http://127.0.0.1:9/mcp?access_token=[secret]"
        )
    assert not _holding(tmp_path / "state", SECRET)


@pytest.mark.parametrize("password", ["Abc/def+Secret123==", "s3cr#t-Passw0rd-XYZ", "s3cr?t-Passw0rd-XYZ"])
def test_a_password_with_a_raw_delimiter_is_refused_without_naming_it(tmp_path: Path, password: str) -> None:
    """Read as the host and path, it was stored and shown in clear (and httpx refused the url)."""
    scene = Scene(tmp_path)
    env = {**scene.env, "ONEIRIC_SESSION_TRANSPORT": "http"}
    env["ONEIRIC_SESSION_URL"] = f"http://alice:{password}@server.example/mcp"
    with pytest.raises(
        ConfigError, match="url: an '@' after its host, or a port that is not a number"
    ) as refused:
        load_config(environ=env)
    assert password not in str(refused.value)
    status = scene.run("status", env={k: v for k, v in env.items() if k.startswith("ONEIRIC_SESSION_")})
    assert status.returncode == 2 and password not in status.stdout + status.stderr


@pytest.mark.parametrize("url", ["http://host/users/@me", "http://host/p?x=a:b@c", "http://u:p%2Fq@h/mcp"])
def test_urls_whose_at_sign_is_no_password_are_accepted(tmp_path: Path, url: str) -> None:
    env = {**Scene(tmp_path).env, "ONEIRIC_SESSION_TRANSPORT": "http", "ONEIRIC_SESSION_URL": url}
    assert load_config(environ=env).settings.url == url


def test_a_servers_echo_of_the_basic_auth_header_is_scrubbed() -> None:
    """httpx sends the url's user:password as `Authorization: Basic base64(user:password)`."""
    from oneiric_session.transport.connection import Connection

    password = "Basic-Auth-Secret-0123456789"
    connection = Connection(Destination(transport="http", url=f"http://alice:{password}@h/mcp"))
    header = base64.b64encode(f"alice:{password}".encode()).decode()
    said = connection.scrub(f"401: credentials refused: Authorization: Basic {header}")
    assert header not in said, said


def test_a_dot_slash_tilde_token_file_is_named_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_file './~x/token' was named '~x/token' (the home of user x) in its refusal and by `status`."""
    scene = Scene(tmp_path)
    here = tmp_path / f"~{_me()}"
    here.mkdir()
    (here / "token").write_text("T0KEN\n")
    os.chmod(here / "token", 0o644)
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={**scene.env, "ONEIRIC_SESSION_TOKEN_FILE": f"./~{_me()}/token"})
    with pytest.raises(
        ConfigError, match=rf"token_file \./~{_me()}/token must be readable by its owner only"
    ):
        config.token()
    os.chmod(here / "token", 0o600)
    result = scene.run("status", "--json", env={"ONEIRIC_SESSION_TOKEN_FILE": f"./~{_me()}/token"})
    assert json.loads(result.stdout)["token"]["file"] == f"./~{_me()}/token"


def test_a_spool_path_naming_a_directory_of_ours_is_not_blamed_on_another_user(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    directory = tmp_path / "state" / "oneiric-session" / "spool-dir"
    directory.mkdir(parents=True, mode=0o700)
    result = scene.run("status", "--json", env={"ONEIRIC_SESSION_SPOOL__PATH": str(directory)})
    warnings = json.loads(result.stdout)["delivery"].get("warnings", [])
    assert any("is not a regular file; set spool.path to a file" in w for w in warnings), warnings
    assert not [w for w in warnings if "another user could have written it" in w], warnings
