"""Review AD of 6d5c7b5: each test fails on 6d5c7b5."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.faults import ID_FROM_DB_PASSWORD as _ID_ANSWER
from tests.support.faults import start_refused_by

WITHHELD_MESSAGE = "[text withheld: it repeats a secret]"

_YEAR = time.gmtime().tm_year  # (the id holds the real date: a secret stamped with this year)

_PASS_THROUGH = """
async def answer(tool, payload):
    return fs.tool_result(json.dumps(payload), structured=payload)
"""


def _connection(env: tuple[tuple[str, str], ...]) -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    return Connection(Destination(command="session-buddy-test", env=env))


def _shown_pieces(secret: str, text: str, size: int) -> list[str]:
    return sorted(
        {secret[i : i + size] for i in range(len(secret) - size + 1)}
        & {text[i : i + size] for i in range(len(text) - size + 1)}
    )


# --- 1. (a) a real id is still refused: the date's '-2' makes the component's tail 'random' ---


@pytest.mark.parametrize(
    ("component", "env"),
    [
        ("oneiric-session", {"SESSION_BUDDY_SECRET_FILE": f"/run/secrets/oneiric-session-{_YEAR}"}),
        ("oneiric-session", {"SESSION_BUDDY_SECRET_FILE": "/run/secrets/oneiric-session-2"}),
        ("crackerjack", {"CRACKERJACK_KEY_FILE": f"/etc/crackerjack-{_YEAR}.key"}),
        ("python3-session", {"GIT_AUTHOR_NAME": "python3-session-bot"}),
    ],
    ids=["year_stamped_secret_file", "second_secret_file", "year_stamped_key", "component_with_digit"],
)
def test_a_real_session_id_is_kept(tmp_path: Path, component: str, env: dict[str, str]) -> None:
    """The id is '<component>-YYYYmmdd-HHMMSS'. A secret-named value holding '<component>-2...'
    (a secret file stamped with the year, a second one) shares 16 characters with the id that
    hold a letter and a digit ('neiric-session-2'), so they 'read as a password's'; the event
    JSON holds '<component>"', not '<component>-2': RejectedError, every start a dead letter.
    Likewise a component with a digit and a '<component>-bot' author name ('ython3-session-')."""
    exc = start_refused_by(tmp_path, _PASS_THROUGH, env, component_name=component)
    assert exc is None, repr(exc)


# --- 2. (b) new in 6d5c7b5: a path with a uid withholds every message naming the runtime dir --


@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"SSH_AUTH_SOCK": "/run/user/1000/ssh-agent.socket"},
            "keyring: org.freedesktop.DBus.Error.NoReply: unix:path=/run/user/1000/bus did not answer",
        ),
        (
            {"SSH_AUTH_SOCK": "/run/user/1000/keyring/ssh"},
            "PermissionError: [Errno 13] Permission denied: '/run/user/1000/session-buddy'",
        ),
    ],
    ids=["dbus", "runtime_dir"],
)
def test_an_agent_socket_path_does_not_withhold_runtime_dir_messages(env: dict[str, str], said: str) -> None:
    """6d5c7b5 takes 12-character windows of a value 'as it is', '/' included: '/run/user/10'
    has a digit and a letter. SSH_AUTH_SOCK (a secret's name: 'auth') in server.env, for a server
    that runs git over ssh, then withholds every message naming $XDG_RUNTIME_DIR. Shown on 2d14f0a."""
    result = _connection(tuple(env.items())).scrub(said)
    assert result != WITHHELD_MESSAGE, result


# --- 3. (b) docs: a path's directory named after the server still withholds its messages ------


def test_a_secret_directory_named_after_the_server_does_not_withhold_its_messages() -> None:
    """docs/operations.md (6d5c7b5): a path in SESSION_BUDDY_SECRET_FILE 'does not withhold every
    message that names the same directory'. A Kubernetes secret mount (/var/run/secrets/<name>/token)
    has 'session-buddy' as a plain run of 8+, which counts whole: review AC #3's message is withheld."""
    said = (
        "session-buddy: cannot open database /var/lib/session-buddy/sessions.sqlite3: "
        "PermissionError: [Errno 13] Permission denied"
    )
    env = (("SESSION_BUDDY_TOKEN_FILE", "/var/run/secrets/session-buddy/token"),)
    result = _connection(env).scrub(said)
    assert result != WITHHELD_MESSAGE and "Permission denied" in result, result


# --- 4. (c) an iCloud Keychain password (one digit) shown cut short gets through --------------

APPLE_PASSWORD = "fomzyb-qabnuk-Ku8jec"  # Safari/iCloud Keychain 'strong password': 1 digit, 1 upper


def test_scrub_withholds_a_keychain_password_cut_short() -> None:
    """docs: only 'a passphrase of lowercase words with no digit, shown cut short' is the price.
    A generated password with one digit near its end, cut before it, has no 12 characters that
    hold a digit: 'fomzyb-qabnuk-Ku' is shown."""
    said = f"authentication failed for password '{APPLE_PASSWORD[:16]}...' (truncated)"
    result = _connection((("DB_PASSWORD", APPLE_PASSWORD),)).scrub(said)
    assert not _shown_pieces(APPLE_PASSWORD, result, 12), result


def test_a_session_id_holding_16_characters_of_a_keychain_password_is_not_kept(tmp_path: Path) -> None:
    """Doc: an id holding '16 of its characters in a row that read as a password's' is not kept;
    16 of a generated password before its only digit do not 'read as' one: kept in the spool."""
    from oneiric_session.errors import RejectedError

    exc = start_refused_by(
        tmp_path,
        _ID_ANSWER.format(session_id='"c-20261207-120000-" + s[:16]'),
        {"DB_PASSWORD": APPLE_PASSWORD},
    )
    assert isinstance(exc, RejectedError), repr(exc)


# --- 5. (c) a symbol password percent-encoded (a DSN, a query) and cut short gets through -----

SYMBOL_PASSWORD = "h7K/q2!Wm@9Zr#4Lx&8Pv*3Nc^6Tb%1Yd!5Gs@0Fj#2Kw$7Qe&9Ra*4Mu^8Hi%3"


def test_scrub_withholds_a_percent_encoded_password_cut_short() -> None:
    """A server that puts DB_PASSWORD in a url (quote(..., safe='')) and shows it cut: its
    percent-encoded form is cut out only whole, pieces are taken only of the value as it is and
    percent-decoded, and its plain runs are 2-3 characters: 60 characters of it are shown."""
    encoded = quote(SYMBOL_PASSWORD, safe="")
    said = f"cannot connect to postgresql://app:{encoded[:60]}... : timeout"
    result = _connection((("DB_PASSWORD", SYMBOL_PASSWORD),)).scrub(said)
    assert encoded[:60] not in result, result
