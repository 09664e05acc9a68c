"""Review U: six defects in the url-secret fixes of the previous stop (each test failed before its fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.delivery import Scene
from tests.support.older_version import older_row

PASSWORD_TAIL = "Secret-Passw0rd-" + "0123456789abcdef"


# An older version (0d06f7f) accepted and spooled these urls (a raw '/' after an all-digit part of the
# password, or a raw '@' before it); d306726 refuses them in settings as unclear, but its spool
# still shows and keeps them as the older version read them.
OLDER_UNCLEAR = [
    f"http://alice:2024/{PASSWORD_TAIL}@127.0.0.1:9/mcp",
    f"http://alice:p@ss/{PASSWORD_TAIL}@127.0.0.1:9/mcp",
]


@pytest.mark.parametrize("url", OLDER_UNCLEAR)
def test_an_older_rows_unclear_url_password_is_not_listed(tmp_path: Path, url: str) -> None:
    scene = Scene(tmp_path)
    older_row(scene, url, "connection refused")
    listing = scene.run("spool", "list")
    said = listing.stdout + listing.stderr
    assert PASSWORD_TAIL not in said, [ln for ln in said.splitlines() if PASSWORD_TAIL in ln]


def test_an_older_rows_undeliverable_unclear_url_password_is_not_kept_on_disk_after_rekey(
    tmp_path: Path,
) -> None:
    """`p@ss/...`: read as RFC 3986 reads it, the password is `p` (host `ss`); rekey makes it a
    reference no shell will ever bring (settings refuse the url), so the row can never be
    delivered, yet the password's tail is kept in the destination brought up to date."""
    from tests.support.older_version import urls_after_rekey

    stored = urls_after_rekey(Scene(tmp_path), OLDER_UNCLEAR[1])
    assert not [u for u in stored if PASSWORD_TAIL in u], stored


def test_a_regressed_describe_of_an_older_row_shows_no_query_secret() -> None:
    """11d162b: describe() of a url whose port is not a number shows what follows the url's last
    '@', wherever it is (a query value, a fragment), as the host."""
    from oneiric_session.tracking.destination import Destination

    secret = "Query-Secret-" + "0123456789abcdef"
    url = f"http://alice:Abc9/{PASSWORD_TAIL}@127.0.0.1:9/mcp?access_token=ab@{secret}"
    said = Destination(transport="http", url=url).describe()
    assert secret not in said, said


SERVER_SECRET = "Server-Env-Secret-" + "0123456789abcdef" * 2
_ECHOING_ANSWER = """
async def answer(tool, payload):
    secret = os.environ["SESSION_BUDDY_SECRET"]
    return fs.text_result("refused: SESSION_BUDDY_SECRET=" + secret + " does not match", is_error=True)
"""


def test_a_server_env_secret_a_tool_answer_repeats_is_not_in_the_error(tmp_path: Path) -> None:
    """A server's tool error answer that repeats a secret of its destination (server.env
    SESSION_BUDDY_SECRET, the url's password or query secret): the RejectedError (the dead
    letter's reason on disk, the agent log, `check`, `status`) carries it whole. Only the token
    is cut from tool answers (answers.server_text); the transport's _scrub is not applied."""
    from oneiric_session.errors import RejectedError
    from tests.support.faults import start_refused_by

    exc = start_refused_by(tmp_path, _ECHOING_ANSWER, {"SESSION_BUDDY_SECRET": SERVER_SECRET})
    assert isinstance(exc, RejectedError), repr(exc)
    assert SERVER_SECRET not in str(exc), str(exc)


def _http_env(tmp_path: Path, url: str) -> dict[str, str]:
    return {**Scene(tmp_path).env, "ONEIRIC_SESSION_TRANSPORT": "http", "ONEIRIC_SESSION_URL": url}


# 11d162b strips the port before its digits are checked, so a url ending in a newline or tab (a YAML
# block scalar `url: |`, a variable set from a file) passes; before it, it was refused with a
# clear message. httpx refuses every url with a control character (InvalidURL, not an HTTPError):
# each attempt is "unexpected InvalidURL" with a traceback, the events wait for ever.
@pytest.mark.parametrize("url", ["http://127.0.0.1:9\n", "http://127.0.0.1:9\t/mcp"])
def test_a_url_with_a_control_character_is_refused_where_given(tmp_path: Path, url: str) -> None:
    from oneiric_session.config.loader import load_config
    from oneiric_session.errors import ConfigError
    from oneiric_session.mcp_compat import httpx

    with pytest.raises(httpx.InvalidURL):
        httpx.URL(url)
    with pytest.raises(ConfigError):
        load_config(environ=_http_env(tmp_path, url))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9\n", "http://300.1.1.1:9/mcp", "http://[::1x]:9/mcp", "http://127.0.0.1:99999/mcp"],
)
def test_who_url_httpx_cannot_use_prints_no_traceback(tmp_path: Path, url: str) -> None:
    scene = Scene(tmp_path)
    said = scene.run("who", "--url", url, timeout=60)
    assert "Traceback" not in said.stderr, said.stderr[-600:]


def test_a_clipped_query_secret_is_not_cut_short_by_another_secret_it_starts_with() -> None:
    """11d162b/fe32050's by-name cut takes the longest secret form the value starts with as the
    whole value: a short secret of the same url (`?auth=1`, a password) that begins a clipped
    token makes it cut that prefix only, and the rest of the token is shown."""
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.tracking.url_rules import without_destination_secrets

    token = "1f9a" + "Review-U-Token-0123456789abcdef"
    destination = Destination(transport="http", url=f"http://127.0.0.1:9/mcp?auth=1&access_token={token}")
    clipped = f"rejected: POST /mcp?auth=1&access_token={token[:20]}\u2026"
    said = without_destination_secrets(clipped, destination.secrets())
    assert "Review-U" not in (said or ""), said


# 5b. What settings cannot check without httpx (a host that is no IDNA name) reaches the transport,
# which maps httpx's InvalidURL to a refusal naming no part of the url: no traceback.
def test_who_url_with_a_host_httpx_cannot_encode_prints_no_traceback(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    said = scene.run("who", "--url", "http://\u00e4\u200d.example:9/mcp", timeout=60)
    assert said.returncode != 0
    assert "Traceback" not in said.stderr, said.stderr[-600:]
    assert "the url cannot be used (InvalidURL)" in said.stderr, said.stderr[-600:]
