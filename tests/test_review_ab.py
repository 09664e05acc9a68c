"""Review AB of 4aac55b and 3649b9e: each test fails on 3649b9e."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import isolated_env, start_refused_by
from tests.support.http_server import listing_server

WITHHELD_MESSAGE = "[text withheld: it repeats a secret]"
WITHHELD_VALUE = "[withheld: it repeats a secret]"


def _connection(env: tuple[tuple[str, str], ...]) -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    return Connection(Destination(command="session-buddy-test", env=env))


# --- 1. pieces of a secret "as it is" (3649b9e): a path's or a phrase's 12 characters with their
#        separators withhold common server messages that hold no secret at all -------------------

FALSE_POSITIVES = [
    pytest.param(
        # Docker/Compose secrets: every secret file is under /run/secrets/. The server names
        # another file it cannot read: "/run/secrets" is 12 characters of the configured path.
        ("SESSION_BUDDY_SECRET_FILE", "/run/secrets/session_buddy_secret"),
        "PermissionError: [Errno 13] Permission denied: '/run/secrets/tls_cert'",
        "Permission denied",
        id="docker_secrets_dir",
    ),
    pytest.param(
        # The standard variable for a Google service account key file (name holds 'credential'),
        # and a stdio server's traceback from its venv in the same home: "/home/alice/".
        ("GOOGLE_APPLICATION_CREDENTIALS", "/home/alice/keys/sa.json"),
        'Traceback (most recent call last):   File "/home/alice/.local/share/uv/tools/session-buddy/'
        'lib/python3.12/site-packages/session_buddy/main.py", line 42, in main '
        "ValueError: SESSION_BUDDY_DB must be set",
        "SESSION_BUDDY_DB must be set",
        id="linux_home_path",
    ),
    pytest.param(
        # The same on macOS: "/Users/alice" is 12 characters, any user name of 5 or more.
        ("GOOGLE_APPLICATION_CREDENTIALS", "/Users/alice/gcp/sa.json"),
        "sqlite3.OperationalError: unable to open database file /Users/alice/Library/session-buddy/db",
        "unable to open database file",
        id="macos_home_path",
    ),
    pytest.param(
        # A secret-named value that is a phrase (OAUTH_* holds 'auth'): no word of it is 8 long,
        # but 'openid profile email' shares 12 characters in a row with it.
        ("OAUTH_SCOPES", "openid profile email offline_access"),
        "invalid_scope: client 'session-buddy' may request only 'openid profile email'",
        "invalid_scope",
        id="oauth_scopes_phrase",
    ),
    pytest.param(
        # An issuer url under a name holding 'auth': "https://auth" is 12 characters of it.
        ("OIDC_AUTH_URL", "https://auth.example.com/realms/x"),
        "cannot fetch JWKS from https://authentik.corp.test/application/o/jwks/: connection refused",
        "cannot fetch JWKS",
        id="issuer_url_prefix",
    ),
    pytest.param(
        # Auth0's own variable names all hold 'auth'; an API audience is a url: "https://api."
        # is 12 characters of it, and of every other API's url a server may fail to reach.
        ("AUTH0_AUDIENCE", "https://api.acme.example"),
        "openai.APIConnectionError: Connection error. (POST https://api.openai.com/v1/embeddings)",
        "APIConnectionError",
        id="auth0_audience_url",
    ),
]


@pytest.mark.parametrize(("setting", "said", "shown"), FALSE_POSITIVES)
def test_a_message_sharing_only_a_separator_laden_12_characters_with_a_secret_is_shown(
    setting: tuple[str, str], said: str, shown: str
) -> None:
    """3649b9e takes 12-character windows of each secret as it is, symbols and spaces included:
    for a secret-named value that is a path, a url or a phrase, those windows are a directory
    prefix, a scheme and a host's start, two common words: a server message holding none of the
    value's words (nor 8 of its plain characters) is withheld whole. On 4aac55b each was shown."""
    result = _connection((setting,)).scrub(said)
    assert result != WITHHELD_MESSAGE and shown in result, result


_ERROR_ANSWER = """
async def answer(tool, payload):
    return fs.text_result({message!r}, is_error=True)
"""


def test_a_refusal_reason_sharing_a_directory_with_a_secret_file_path_is_kept(tmp_path: Path) -> None:
    """End to end: a stdio server refusing a start (a dead letter records why) with a reason that
    names another file under /run/secrets: the dead letter, the log and `status` say only
    '[text withheld: it repeats a secret]' (4aac55b kept the reason)."""
    from oneiric_session.errors import RejectedError

    message = "cannot start: PermissionError: '/run/secrets/db_password' is not readable by uid 999"
    exc = start_refused_by(
        tmp_path,
        _ERROR_ANSWER.format(message=message),
        {"SESSION_BUDDY_SECRET_FILE": "/run/secrets/session_buddy_secret"},
    )
    assert isinstance(exc, RejectedError), repr(exc)
    assert "not readable by uid 999" in str(exc), str(exc)


# --- 2. who/last --url: what `_withheld` does not look at ----------------------------------------


def _listing(
    tmp_path: Path, command: str, *extra: str, row: dict[str, Any], url_userinfo: str = "", token: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **isolated_env(tmp_path), "COLUMNS": "300"}
    env.pop("SESSION_BUDDY_TOKEN", None)
    if token:
        env["SESSION_BUDDY_TOKEN"] = token
    with listing_server(tmp_path, LISTING_ROW=json.dumps(row)) as url:
        if url_userinfo:
            url = url.replace("http://", f"http://{url_userinfo}@", 1)
        return subprocess.run(
            [sys.executable, "-m", "oneiric_session", command, "--url", url, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.listed-token-0123456789abcdef0123456789abcdef"


def test_who_url_json_withholds_a_listed_key_that_repeats_the_token(tmp_path: Path) -> None:
    """`_withheld` looks at values only; `--json` prints every key a server sent as it came (the
    server lists what anyone recorded; `_plain` keeps any key as its text)."""
    said = _listing(tmp_path, "who", "--json", row={f"note {TOKEN}": "x"}, token=TOKEN)
    assert said.returncode == 0, said.stderr
    assert "listed-token" not in said.stdout, said.stdout


def test_who_url_withholds_a_listed_number_that_is_the_urls_password(tmp_path: Path) -> None:
    """A numeric url password (a PIN-like one) listed back as a number (a pid): `_withheld` looks
    at strings only, the table and `--json` print it."""
    password = "84736251"
    said = _listing(tmp_path, "who", "--json", row={"pid": int(password)}, url_userinfo=f"alice:{password}")
    assert said.returncode == 0, said.stderr
    assert password not in said.stdout, said.stdout


@pytest.mark.parametrize(
    ("password", "shown"),
    [("k9Qx7LmZ2vRt8WbN4cYh", 15), ("p@ss-W0rd-2026", 13)],
    ids=["20_of_15", "14_of_13"],
)
def test_who_url_withholds_most_of_the_urls_password_as_a_message_would_be(
    tmp_path: Path, password: str, shown: int
) -> None:
    """`who --url` withholds by `repeats_secret`, the session-id rule (16 characters in a row);
    the same text in a message (`scrub`) is withheld from 12. A listed value holding 15 of a
    20-character url password (a server cutting a long value for its listing) is printed; of a
    password shorter than 16 characters, only the whole of it is ever withheld."""
    row = {"hostname": password[:shown] + "…"}
    from urllib.parse import quote

    said = _listing(tmp_path, "last", "--json", row=row, url_userinfo=f"alice:{quote(password, safe='')}")
    assert said.returncode == 0, said.stderr
    assert _connection((("DB_PASSWORD", password),)).scrub(row["hostname"]) == WITHHELD_MESSAGE
    assert password[:12] not in said.stdout, said.stdout
