"""Review AC of 84fda4c..2d14f0a: each test fails on 2d14f0a."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import ID_FROM_DB_PASSWORD as _ID_ANSWER
from tests.support.faults import start_refused_by

WITHHELD_MESSAGE = "[text withheld: it repeats a secret]"


def _connection(env: tuple[tuple[str, str], ...]) -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    return Connection(Destination(command="session-buddy-test", env=env))


def _shown_pieces(secret: str, text: str, size: int = 12) -> list[str]:
    return sorted(
        {secret[i : i + size] for i in range(len(secret) - size + 1)}
        & {text[i : i + size] for i in range(len(text) - size + 1)}
    )


# --- 1. (a) the default component's real session id is refused: every start dead-lettered ------

_PASS_THROUGH = """
async def answer(tool, payload):
    return fs.tool_result(json.dumps(payload), structured=payload)
"""


@pytest.mark.parametrize(
    "env",
    [
        {"SESSION_BUDDY_SECRET_FILE": "/run/secrets/oneiric-session-secret"},
        {"GIT_AUTHOR_NAME": "oneiric-session-bot"},
    ],
    ids=["docker_secret_file", "git_author_name"],
)
def test_the_default_components_session_id_is_kept(tmp_path: Path, env: dict[str, str]) -> None:
    """`oneiric-session shell` reports component 'oneiric-session' (15 characters); the server's
    id is 'oneiric-session-YYYYMMDD-HHMMSS', built from the event alone. A secret-named value
    holding 'oneiric-session-' (a run of 16+) shares the 16 characters 'oneiric-session-' with
    the id; the event JSON holds 'oneiric-session"' (no 16 of the secret's characters), so the
    excuse does not apply: RejectedError, every start a dead letter."""
    exc = start_refused_by(tmp_path, _PASS_THROUGH, env, component_name="oneiric-session")
    assert exc is None, repr(exc)


# --- 2. (b) a password with a '/' or a space (a passphrase) shown cut in the middle -------------

SLASH_PASSWORD = "h7K/q2!Wm@9Zr#4Lx&8Pv*3Nc^6Tb%1Yd!5Gs@0Fj#2Kw$7Qe&9Ra*4Mu^8Hi%3"
# (Not here: a passphrase of lowercase words, "correct horse battery staple ...", shown cut short.
# Its pieces are the words of ordinary text, which a secret-named path, name, url or scope list
# shares with many a message; telling them apart is not done. docs/operations.md says so.)


def _pydantic_says(value: str) -> str:
    from pydantic import BaseModel, Field, ValidationError

    class Settings(BaseModel):
        db_password: str = Field(max_length=32)

    try:
        Settings(db_password=value)
    except ValidationError as exc:
        return str(exc)
    raise AssertionError("pydantic accepted it")


def test_scrub_withholds_a_password_with_a_slash_shown_cut() -> None:
    """2d14f0a takes pieces of a value 'as it is' only when it has no whitespace, '/' or '\\':
    a password manager's password holding one '/' (KeePass, LastPass symbol sets) is back to
    review AA #3: pydantic's '<24>...<24>' shows 48 of its characters."""
    password = SLASH_PASSWORD
    shown = _pydantic_says(password)
    assert password[:24] in shown  # (pydantic cut it in the middle)
    said = _connection((("DB_PASSWORD", password),)).scrub(shown)
    assert not _shown_pieces(password, said), said


def test_a_session_id_holding_most_of_a_password_with_a_slash_is_not_kept(tmp_path: Path) -> None:
    """Doc: an id holding '16 of its characters in a row' of a secret is not kept. For a password
    with a '/', `_holds` looks only at plain runs of 16+: 40 of its characters are kept as the id
    (spool, `check`, `spool list`). Same as review AA #4 with one '$' turned into '/'."""
    from oneiric_session.errors import RejectedError

    exc = start_refused_by(
        tmp_path,
        _ID_ANSWER.format(session_id='"c-20261207-120000-" + s[:40]'),
        {"DB_PASSWORD": SLASH_PASSWORD},
    )
    assert isinstance(exc, RejectedError), repr(exc)


# --- 3. (c) a secret file named after the server withholds every message naming the server -----


def test_a_secret_file_named_after_the_server_does_not_withhold_its_messages() -> None:
    """2466b96's 12-character pieces of a secret's *words*: a Docker secret file named after the
    server (/run/secrets/session-buddy-secret: 'session-budd' is 12 characters of its word) withholds
    every message naming 'session-buddy' (its log lines, a traceback through uv/tools/session-buddy/),
    while the value's words hold no secret. On 84fda4c it was shown."""
    said = (
        "session-buddy: cannot open database /var/lib/session-buddy/sessions.sqlite3: "
        "PermissionError: [Errno 13] Permission denied"
    )
    result = _connection((("SESSION_BUDDY_SECRET_FILE", "/run/secrets/session-buddy-secret"),)).scrub(said)
    assert result != WITHHELD_MESSAGE and "Permission denied" in result, result
