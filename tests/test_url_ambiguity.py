"""Reviews R and S: urls read as RFC 3986 reads them, the settings cache's pruning, and secrets
cut out of an older version's errors; each test failed on the code it reviewed.

A url whose port is not a number (what a password with a raw '/', '?' or '#' becomes) is refused
without being named, in settings and by `who --url`, and shown by no command when an older
version spooled it; IPv6 literals and an '@' after a numeric port are accepted. The settings
cache drops older entries at any miss, never waiting on a FIFO, never deleting a newer version's
entries nor any file that is not ours. A url secret is cut out of an older version's errors
however it was written, encoded or cut short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.errors import ConfigError
from tests.support.delivery import Scene
from tests.support.older_version import older_cache_entry, older_row


def _http_env(tmp_path: Path, url: str) -> dict[str, str]:
    return {**Scene(tmp_path).env, "ONEIRIC_SESSION_TRANSPORT": "http", "ONEIRIC_SESSION_URL": url}


# 1-2. a url is read as RFC 3986 (and httpx) read it; one whose port is not a number is refused,
# since that is what a password holding a raw '/', '?' or '#' becomes.
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/mcp?from=a@b",
        "http://host/users/@me",
        "http://[::1]:8080/users/%40me",
        "http://[fe80::1%25eth0]:8080/mcp",
        "http://u:p%2Fq@h:8/mcp?x=a",
        "http://127.0.0.1:9 ",
    ],
)
def test_a_url_read_alike_by_everyone_is_accepted(tmp_path: Path, url: str) -> None:
    assert load_config(environ=_http_env(tmp_path, url)).settings.url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:Abc/def-Secret-Passw0rd@server.example/mcp",
        "http://alice:p4ss#Secret-Passw0rd@server.example/mcp",
        "http://alice:p4ss?Secret-Passw0rd@server.example/mcp",
        "http://alice:x@[::1]:Secret-Passw0rd/mcp",
        "http://alice:2024/Secret-Passw0rd@server.example/mcp",
        "http://alice:p@ss/Secret-Passw0rd@127.0.0.1:9/mcp",
        "http://admin:Secret-Passw0rd@t@[::1]:8/mcp?q=a@b#c@d",
        "http://[::1]:8080/users/@me-Secret-Passw0rd",
        "http://host:8080/mcp?from=a@Secret-Passw0rd",
    ],
)
def test_a_url_a_password_could_hide_in_is_refused_without_naming_it(tmp_path: Path, url: str) -> None:
    """A port that is not a number, or an '@' after a host with a ':': what a password with a raw
    '/', '?', '#' or '@' becomes, read as RFC 3986 reads it (the host, the path), so refused with
    how to write it; '%40' writes an '@' that is no password's (reviews S and T)."""
    with pytest.raises(
        ConfigError, match="url: an '@' after its host, or a port that is not a number"
    ) as refused:
        load_config(environ=_http_env(tmp_path, url))
    assert "Secret-Passw0rd" not in str(refused.value)


# 3. _prune opens every *.json in the cache directory for a blocking read: a FIFO hangs the shell.
def test_a_fifo_in_the_cache_directory_does_not_hang_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from oneiric_session.config.shell_view import cache_dir

    scene = Scene(tmp_path)
    for name, value in scene.env.items():
        monkeypatch.setenv(name, value)
    directory = cache_dir()
    directory.mkdir(parents=True, mode=0o700)
    os.mkfifo(directory / "stray.json", 0o600)
    shell = scene.shell(1)
    try:
        shell.communicate(timeout=20)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    finally:
        shell.kill()
        shell.communicate()
        scene.stop_agents()
    assert not hung, "the shell hung in config.view_store.prune opening a FIFO"


# 4. _prune deletes a *newer* version's entries (two installs sharing ~/.local/state thrash).
def test_a_newer_versions_cache_entry_is_not_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oneiric_session.config.shell_view import CACHE_FORMAT, cache_dir

    scene = Scene(tmp_path)
    for name, value in scene.env.items():
        monkeypatch.setenv(name, value)
    directory = cache_dir()
    directory.mkdir(parents=True, mode=0o700)
    newer = directory / f"fedcba9876543210.v{CACHE_FORMAT + 1}.json"
    newer.write_text(json.dumps({"format": CACHE_FORMAT + 1, "key": "fedcba9876543210", "view": {}}))
    newer.chmod(0o600)
    scene.run_shell(1)
    scene.stop_agents()
    assert newer.exists(), "a newer version's entry (which holds no old secret) was deleted"


# 5-7. what rekey (and spool list) leave of a url secret an older version spooled in an error.
SECRET = "upgrade-query-secret-" + "fedcba9876543210" * 2
URL = f"http://127.0.0.1:9/mcp?access_token={SECRET}"


def _left_of(secret: str, text: str, size: int = 12) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1) if secret[i : i + size] in text]


def test_rekey_leaves_no_part_of_a_secret_an_older_version_clipped(tmp_path: Path) -> None:
    """An older version's error was capped (server text 300 chars, rows 2000): the cap can fall inside
    the secret, and the prefix left is no longer the whole secret that without_secrets looks for."""
    from oneiric_session.spool import Spool

    scene = Scene(tmp_path)
    said = "x" * 200 + f" not found: {URL}"
    older_row(scene, URL, f"rejected: {said[:299]}…")  # server_text's cap (300) in the middle of the secret
    with Spool(scene.spool_path) as spool:
        spool.rekey()
        (row,) = spool.list_pending()
    assert not _left_of(SECRET, row.last_error), row.last_error[-80:]


def test_a_long_secret_glued_to_a_letter_is_cut_out(tmp_path: Path) -> None:
    """The url named inside another url's query (percent-encoded: '...%3D<secret>'); the transport's
    own scrub (connection._spans) cuts a long secret anywhere, without_secrets only as a word."""
    from oneiric_session.spool import Spool

    scene = Scene(tmp_path)
    older_row(
        scene,
        URL,
        f"login required: http://idp/login?next=http%3A%2F%2F127.0.0.1%3A9%2Fmcp%3Faccess_token%3D{SECRET}",
    )
    listing = scene.run("spool", "list")
    assert SECRET not in listing.stdout, listing.stdout
    with Spool(scene.spool_path) as spool:
        spool.rekey()
        (row,) = spool.list_pending()
    assert SECRET not in row.last_error, row.last_error


def test_two_overlapping_secrets_leave_no_part_of_either() -> None:
    """connection._cut_out merges overlapping spans ("a secret overlapping another is never left in
    part"); without_secrets replaces one after the other."""
    from oneiric_session.common.scrub import without_secrets

    first, second = "Alpha-Secret-1111-Beta-Shared", "Beta-Shared-Gamma-Secret-2222"
    text = without_secrets("said: Alpha-Secret-1111-Beta-Shared-Gamma-Secret-2222", [first, second])
    assert not (_left_of(first, text, 8) + _left_of(second, text, 8)), text


# 8. the older version's entry is deleted only at a store: a configuration this version refuses
# (the raw-delimiter password format 3 cached in clear) never stores, so it stays for good.
def test_an_older_entry_holding_a_now_refused_url_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://alice:Abc/def-Secret-Passw0rd@server.example/mcp"
    scene = Scene(tmp_path, transport="http", url=url)
    entry = older_cache_entry(scene, monkeypatch, url)
    shell = scene.shell(1)
    _out, err = shell.communicate(timeout=60)
    scene.stop_agents()
    assert "a port that is not a number" in err, err[-500:]  # this version refuses the url ...
    assert not entry.exists(), "... but the older entry holding it in clear stays"


# 9. the same url an older version spooled (its destination in clear: no password is seen in it)
# was shown whole by `spool list` (its stored destination stays as it was: it never worked).
def test_an_older_destination_whose_port_is_not_a_number_is_not_shown(tmp_path: Path) -> None:
    url = "http://alice:Abc/def-Secret-Passw0rd@server.example/mcp"
    scene = Scene(tmp_path)
    older_row(scene, url, "connection refused")
    listing = scene.run("spool", "list")
    # Not even the host it seems to name: any part of an unclear url may be a password's (review X).
    assert "-> http (a url not shown) " in listing.stdout
    assert "Secret-Passw0rd" not in listing.stdout, listing.stdout


# 10. _secret_forms: a query secret written with a character httpx percent-encodes as it sends it
# (non-ASCII) is echoed by a server in the form sent, which is none of the forms looked for.
def test_a_servers_echo_of_a_query_secret_as_httpx_sent_it_is_scrubbed() -> None:
    """httpx percent-encodes a non-ASCII query value as it sends it: `café` as `caf%C3%A9`."""
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    url = "http://h/mcp?access_token=caf\u00e9-Secret-0123456789abcdef"
    sent = "/mcp?access_token=caf%C3%A9-Secret-0123456789abcdef"  # the request target httpx builds
    said = Connection(Destination(transport="http", url=url)).scrub(f"404: no route for {sent}")
    assert "Secret-0123456789abcdef" not in said, said
