"""Review X: secrets still shown after review W (each test failed before its fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.delivery import Scene

# --- 1. withheld undoes escapes one code unit / one byte at a time: a non-ASCII secret escapes -----

KEY = "S\U0001f511rver-Secret-0123456789abcdef-xxxxxxxx"  # a character outside the BMP
UMLAUT = "S\u00ebrver-Secret-0123456789abcdef-xxxxxxxx"

ESCAPED = [
    # JSON in JSON (the shape review W fixed): json.dumps writes U+1F511 as the pair \ud83d\udd11.
    (KEY, lambda s: json.dumps(json.dumps({"SESSION_BUDDY_SECRET": s}))),
    # A Python server printing bytes (its environment, a request body): UTF-8, as \xc3\xab.
    (UMLAUT, lambda s: repr({b"SESSION_BUDDY_SECRET": s.encode()})),
    (KEY, lambda s: repr(s.encode())),
    # unicode_escape / Go's %+q: \U0001f511.
    (KEY, lambda s: s.encode("unicode_escape").decode("ascii")),
]


@pytest.mark.parametrize(
    ("secret", "quote"), ESCAPED, ids=["json-in-json-pair", "bytes-utf8", "bytes-utf8-astral", "U-escape"]
)
def test_a_non_ascii_secret_escaped_by_the_server_is_cut_or_withheld(secret: str, quote) -> None:
    """scrub.withheld turns `\\ud83d\\udd11` into two lone surrogates (not U+1F511), `\\xc3\\xab`
    into 'Ã«' (not 'ë'), and `\\U0001f511` into 'U0001f511': the secret never shows once undone,
    so the text is kept, and everything after its first non-ASCII character reaches the dead
    letter, the log and `status` (Connection.scrub: tool answers, MCP errors, stderr tails)."""
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="sb", env=(("SESSION_BUDDY_SECRET", secret),)))
    said = connection.scrub("stderr: " + quote(secret))
    assert "0123456789abcdef" not in said, said


# --- 2. spool list names part of an older row's password as its host --------------------------------

PASSWORD_PART = "Secret-Passw0rd-" + "0123456789abcdef"


@pytest.mark.parametrize("mark", ["?", "#"])
def test_spool_list_shows_no_part_of_an_older_rows_password_holding_a_raw_at_and_question_mark(
    tmp_path: Path, mark: str
) -> None:
    """A password `Abc@<part>?tail` (raw '@' and '?', as an older version took it): the url is
    unclear, and url_at_rest/unusable_url now keep and send none of it, but shown_url still names
    its host as what follows 'the last @ before any ? or #' — the password's middle, `<part>` —
    and `spool list` prints it (before any agent rekeyed the row, and in `--json`)."""
    from tests.support.older_version import older_row

    scene = Scene(tmp_path)
    older_row(scene, f"http://alice:Abc@{PASSWORD_PART}{mark}tail@127.0.0.1:9/mcp", "connection refused")
    listing = scene.run("spool", "list")
    assert listing.returncode == 1, listing.stderr
    assert PASSWORD_PART not in listing.stdout, listing.stdout


# --- 3. a secret the server percent-encodes as a form does ('+', '/', '=' encoded) ------------------

B64 = "Pass+w0rd/0123456789abcdef=="  # base64 secrets hold '+', '/' and '='


@pytest.mark.parametrize("where", ["token", "server.env"])
def test_a_secret_the_server_form_encodes_is_cut_or_withheld(where: str) -> None:
    """secret_forms holds a value percent-encoded only as httpx encodes a query (`+`, `/`, `=` left
    as they are), Connection.scrub cuts a token only as sent, and withheld undoes backslash escapes
    only: a server naming the secret form-encoded (`urlencode`, a login link: `%2B`, `%2F`, `%3D`)
    has it reach the dead letter, the log and `status` whole."""
    from urllib.parse import urlencode

    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    if where == "token":
        connection = Connection(Destination(transport="http", url="http://127.0.0.1:9/mcp"))
        connection._tokens.add(B64)  # what call(token=...) does
    else:
        connection = Connection(Destination(command="sb", env=(("SESSION_BUDDY_SECRET", B64),)))
    said = connection.scrub("not signed in; log in at /login?" + urlencode({"next": "/mcp", "token": B64}))
    assert "0123456789abcdef" not in said, said
