"""Review S: what f56b7e8's reading of an ambiguous url did to an older version's rows, the
settings cache directory of another user, and secrets cut out by name; each test failed on it.

A url is read as RFC 3986 reads it again (tests/test_url_ambiguity.py): an older version's row
for a url with a port and an '@' after it is delivered, and a url whose port is not a number
shows no part of itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.delivery import Scene
from tests.support.older_version import older_row

QUERY_SECRET = "Review-S-Query-" + "0123456789abcdef" * 2
# An older version's url: a raw '?' in the password (the shape this version reads as
# `user:password@` up to the last '@') and a secret query parameter.
AMBIGUOUS = f"http://alice:Abc?def-Passw0rd@server.example/mcp?access_token={QUERY_SECRET}"


# 1. _with_url_secrets replaces the password first, then finds the query again in the new url: the
# query secret's name (`url_secrets` read the '?' in the password as the query's start:
# "def-Passw0rd@server.example/mcp?access_token") is not found there, so the value stays.
def test_an_ambiguous_urls_query_secret_is_neither_shown_nor_stored() -> None:
    from oneiric_session.tracking.destination import Destination

    d = Destination(transport="http", url=AMBIGUOUS)
    assert QUERY_SECRET not in d.describe(), d.describe()
    assert QUERY_SECRET not in d.to_json()


def test_an_ambiguous_urls_key_is_stable_through_disk() -> None:
    from oneiric_session.tracking.destination import Destination

    d = Destination(transport="http", url=AMBIGUOUS)
    back = Destination.from_json(d.to_json())
    assert back.key == d.key


def test_an_older_rows_ambiguous_url_query_secret_is_not_left_on_disk_nor_listed(tmp_path: Path) -> None:
    from oneiric_session.spool import Spool

    scene = Scene(tmp_path)
    older_row(scene, AMBIGUOUS, "connection refused")
    listing = scene.run("spool", "list")
    with Spool(scene.spool_path) as spool:
        spool.rekey()
    with Spool(scene.spool_path) as spool, spool.transaction() as conn:
        stored = [text for (text,) in conn.execute("SELECT json FROM destinations")]
    assert "Passw0rd" not in listing.stdout
    assert QUERY_SECRET not in listing.stdout, listing.stdout
    assert not [text for text in stored if QUERY_SECRET in text], stored


# 2. A url with a port and an '@' in its query, accepted by bf245d2 and spooled by it, cannot be
# told from a password holding a raw '?' (`alice:2024?tail@host`: host `alice` to RFC 3986, review
# W): such a row is never sent (review S had it delivered, the tail of such a password included).
# Nothing is lost: it is dead-lettered saying why, and `spool replay --dead` with the url written
# as the settings take it (`%40`) delivers it.
def test_rows_an_older_version_spooled_for_a_port_and_an_at_in_the_query_wait_for_the_url_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.delivery import wait_until
    from tests.support.http_server import HttpServer

    (tmp_path / "server").mkdir()
    server = HttpServer(tmp_path / "server")
    url = f"{server.url}?reporter=ops@example.org"
    scene = Scene(tmp_path)
    older_row(scene, url, "connection refused")
    server.start()
    agent = scene.start_agent()
    try:

        def refused() -> bool:
            with scene.spool() as spool:
                return bool(spool.list_dead())

        wait_until(refused, what="the older row refused", timeout=20)
        with scene.spool() as spool:
            (dead,) = spool.list_dead()
        assert "(never sent)" in (dead.dead_reason or ""), dead.dead_reason
        assert server.rows() == []
    finally:
        agent.kill()
        agent.wait()
        scene.stop_agents()
    try:
        scene.configure(transport="http", url=url.replace("@", "%40"))
        replay = scene.run("spool", "replay", "--dead")
        assert len(server.rows()) == 1, replay.stdout + replay.stderr
    finally:
        scene.stop_agents()
        server.kill()


# 3. A miss prunes (`view_store.prune`), in a directory it does not trust: _read_trusted refuses an
# entry when the directory (or the entry) is not ours, which makes every start a miss there, and
# the prune then deleted the oldest entries beyond MAX_ENTRIES (and any '.tmp' a minute old) whoever
# owns them. Here: root's shell (sudo keeping HOME) in a user's state directory.
def test_a_miss_deletes_nothing_in_a_cache_directory_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oneiric_session.config.shell_view import CACHE_FORMAT, cache_dir, read_cached
    from oneiric_session.config.view_store import MAX_ENTRIES, prune

    other = 4242
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    directory = cache_dir()
    directory.mkdir(parents=True, mode=0o700)
    os.chown(directory, other, other)
    names = []
    for i in range(MAX_ENTRIES + 2):
        key = f"{i:064x}"
        entry = directory / f"{key}.json"
        entry.write_text(json.dumps({"format": CACHE_FORMAT, "key": key, "selection": ["noop", "x"]}))
        entry.chmod(0o600)
        os.chown(entry, other, other)
        os.utime(entry, (1_000_000 + i, 1_000_000 + i))
        names.append(entry.name)
    tmp = directory / ".another-users-write.tmp"
    tmp.write_text("{}")
    os.chown(tmp, other, other)
    os.utime(tmp, (1_000_000, 1_000_000))
    assert read_cached("f" * 64, os.environ) is None  # a miss: the directory is not ours
    prune()  # what a miss does (tracking.registry, view_store.load_shell_view)
    left = sorted(p.name for p in directory.iterdir())
    assert left == sorted([*names, tmp.name]), f"deleted: {sorted(set([*names, tmp.name]) - set(left))}"


# 4. without_secrets cuts a query secret's value by name only after a raw '?'/'&' and '=': the same
# url named percent-encoded inside another url (the shape of test_url_ambiguity's IdP redirect) and
# cut short by an older version's cap (the shape of its clipped test) leaves the secret's prefix.
SECRET = "upgrade-query-secret-" + "fedcba9876543210" * 2
URL = f"http://127.0.0.1:9/mcp?access_token={SECRET}"


@pytest.mark.parametrize(
    "nested",
    [
        "http://idp/login?next=http%3A%2F%2F127.0.0.1%3A9%2Fmcp%3Faccess_token%3D",
        # a url in a url in a url (an IdP's redirect inside another's), review T
        "http://idp/login?next=https%3A%2F%2Fsso%2Fauth%3Fnext%3Dhttp%253A%252F%252F127.0.0.1%253A9"
        "%252Fmcp%253Faccess_token%253D",
    ],
    ids=["encoded-once", "encoded-twice"],
)
def test_a_clipped_secret_in_a_percent_encoded_url_is_cut_out(tmp_path: Path, nested: str) -> None:
    from oneiric_session.spool import Spool

    scene = Scene(tmp_path)
    said = "x" * 100 + f" login required: {nested}{SECRET}"
    older_row(scene, URL, f"rejected: {said[:299]}…")  # server_text's cap, inside the secret
    assert SECRET[:24] in said[:299]
    listing = scene.run("spool", "list")
    with Spool(scene.spool_path) as spool:
        spool.rekey()
        (row,) = spool.list_pending()
    assert SECRET[:24] not in listing.stdout, listing.stdout[-200:]
    assert SECRET[:24] not in row.last_error, row.last_error[-120:]


# 5. `who --url` (and `last --url`) takes a url the settings would refuse, and describe() now reads
# a port then an '@' in the query as `user:password@`: the message names the wrong server.
def test_who_url_with_a_port_and_an_at_in_the_query_is_refused_with_how_to_write_it(tmp_path: Path) -> None:
    """It was named as the server '***@example.org' (review S); an '@' after a host with a port is
    refused where it is given, as in the settings, with '%40' to write it (review T)."""
    scene = Scene(tmp_path)
    said = scene.run("who", "--url", "http://127.0.0.1:9/mcp?from=ops@example.org")
    assert said.returncode == 2, said.stderr
    assert "--url: an '@' after its host" in said.stderr and "(%40)" in said.stderr, said.stderr


# 6. ... and a url with a raw '/' in its password (refused in settings, "the message never shows
# it") reaches httpx, which fails on the "port": a traceback naming part of the password.
def test_who_url_with_a_raw_slash_in_its_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    said = scene.run("who", "--url", "http://alice:Abc9/def-Secret-Passw0rd@127.0.0.1:9/mcp")
    assert said.returncode != 0
    assert "Traceback" not in said.stderr, said.stderr[-300:]
    assert "Abc9" not in said.stderr and "Secret-Passw0rd" not in said.stderr, said.stderr[-300:]


# 7. the by-name cut takes everything after `name=` up to '&', '#', a space or a quote: the
# punctuation that closes the url in a message (')', ',', ':', '.') goes with it, though the whole
# secret was found and cut already.
def test_the_by_name_cut_takes_only_the_value(tmp_path: Path) -> None:
    from oneiric_session.common.scrub import without_secrets

    said = without_secrets(
        f"unauthorized (GET /mcp?access_token={SECRET}), retrying", [SECRET], [("access_token", SECRET)]
    )
    assert said == "unauthorized (GET /mcp?access_token=[secret]), retrying", said
