"""Review AA of 2466b96 (and f589c42 before it): each test fails on 2466b96."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import start_refused_by

# A password manager's password (letters, digits and its symbols): no 8 of its characters in a
# row are letters or digits, so it holds no `_PLAIN_RUN` at all.
SYMBOL_PASSWORD = "h7K$q2!Wm@9Zr#4Lx&8Pv*3Nc^6Tb%1Yd!5Gs@0Fj#2Kw$7Qe&9Ra*4Mu^8Hi%3"

_ID_ANSWER = """
async def answer(tool, payload):
    s = os.environ['DB_PASSWORD']
    said = {{"status": "tracked", "session_id": {session_id}}}
    return fs.tool_result(json.dumps(said), structured=said)
"""


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _connection(env: tuple[tuple[str, str], ...], token: str | None = None) -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="session-buddy-test", env=env))
    if token:
        connection._tokens.add(token)  # (as `call` does when it sends it)
    return connection


def _shown_pieces(secret: str, text: str, size: int = 12) -> list[str]:
    """The `size` characters in a row of `secret` that stand in `text`."""
    return sorted(
        {secret[i : i + size] for i in range(len(secret) - size + 1)}
        & {text[i : i + size] for i in range(len(text) - size + 1)}
    )


# --- 1. scrub's 2048-character cut leaves part of a secret, and cutting a long token pulls it in view


def test_scrub_does_not_show_the_part_of_a_secret_its_2048_character_cut_left() -> None:
    """`scrub` cuts the text at 2048 characters *before* it looks for secrets: a secret standing
    across character 2048 is no longer found whole, only its start is left. `server_text` shows
    the first 300 characters of what is left once the secrets found were cut out, and a long
    token (an OIDC access token with group claims, ~2 KB) cut out of the start shrinks the text
    by ~1960 characters: the start of the next secret moves into what is shown. On f589c42 (the
    whole text looked at) it was '[secret]'."""
    password = "Xy7#Qp2!Lm9$Vt4&Rb8*Kd3^Wn6"  # DB_PASSWORD: no plain run, so no piece rule
    claims = {"sub": "alice", "groups": [f"team-{n:04d}-engineering" for n in range(45)]}
    jwt = _b64({"alg": "RS256", "typ": "JWT"}) + "." + _b64(claims) + "." + "Zm9vYmFy" * 43
    head_words = "startup failed: Authorization: Bearer  and DB_PASSWORD="
    jwt += "A" * (2048 - 20 - len(head_words) - len(jwt))  # 20 of the password's 27 before 2048
    text = f"startup failed: Authorization: Bearer {jwt} and DB_PASSWORD={password} (check settings)"
    assert len(jwt) > 1900 and text.index(password) < 2048 < text.index(password) + len(password)

    said = _connection((("DB_PASSWORD", password),), jwt).scrub(text)
    assert not _shown_pieces(password, said), said


# --- 2. redacted_traceback's chain cap drops where a bug began, and does not say so -------------


def _lookup(table: dict[str, int]) -> int:
    return table["missing"]  # (the bug: where the log should point)


def _wrapped(levels: int) -> int:
    try:
        return _lookup({}) if levels == 0 else _wrapped(levels - 1)
    except Exception as exc:
        raise RuntimeError(f"while loading level {levels}") from exc


def test_bug_report_of_a_long_chain_still_says_where_it_began() -> None:
    """A recursive loader that wraps each level's error (`raise ... from exc`): the KeyError at
    the bottom, in `_lookup`, is the bug; each RuntimeError's traceback holds only its own
    frames. `_CHAIN_LENGTH` keeps the 32 newest errors and drops the first one silently: the
    report names neither KeyError nor `_lookup`, and nothing in it says errors were left out
    (the group caps say 'not shown'; Python's own traceback has no chain cap)."""
    from oneiric_session.agent.worker import bug_report

    try:
        _wrapped(40)
    except RuntimeError as exc:
        report = bug_report(exc)
    assert "KeyError" in report and "_lookup" in report, report[:400]


# --- 3. a symbol-rich secret shown cut in the middle (pydantic) gets past scrub -----------------


def test_scrub_withholds_a_symbol_rich_secret_shown_cut_in_the_middle() -> None:
    """f589c42 / 2466b96: withheld() counts only a secret's runs of letters, digits and `._~-`;
    a password manager's password has none 8 long, so pydantic's `input_value='<24>...<24>'`
    (a stdio server refusing its settings, on stderr: `_tail` -> scrub) shows 48 of its 64
    characters in the error, the log, the spool and `status`."""
    shown = (
        "1 validation error for Settings\ndb_password\n  String should have at most 32 characters "
        f"[type=string_too_long, input_value='{SYMBOL_PASSWORD[:24]}...{SYMBOL_PASSWORD[-24:]}', "
        "input_type=str]"
    )
    said = _connection((("DB_PASSWORD", SYMBOL_PASSWORD),)).scrub(shown)
    assert not _shown_pieces(SYMBOL_PASSWORD, said), said


# --- 4. a session id holding 16+ characters in a row of a symbol-rich secret is kept -------------


@pytest.mark.parametrize(
    "session_id",
    ['f"input_value={s[:24]!r}...{s[-24:]!r}"', '"c-20261207-120000-" + s[:40]'],
)
def test_a_session_id_holding_most_of_a_symbol_rich_secret_is_not_kept(
    tmp_path: Path, session_id: str
) -> None:
    """2466b96 #3: 'an id is refused for 16 of a secret's characters in a row'. `_holds` looks for
    16 characters of the secret's plain runs only: 40 characters in a row of a password with a
    symbol every 2-3 characters are kept as the session id (stored in the spool, sent back with
    the end, printed by `check` and `spool list`), as review Z's own test cases, with a hex secret,
    are refused."""
    from oneiric_session.errors import RejectedError

    exc = start_refused_by(
        tmp_path, _ID_ANSWER.format(session_id=session_id), {"DB_PASSWORD": SYMBOL_PASSWORD}
    )
    assert isinstance(exc, RejectedError), repr(exc)
