"""Review AE of e49dda1: each test failed on e49dda1 (in-process: the connection's rules alone)."""

from __future__ import annotations

from typing import Any

import pytest

from oneiric_session.tracking import events
from oneiric_session.tracking.destination import Destination
from oneiric_session.tracking.limits import Limits
from oneiric_session.transport.connection import Connection

WITHHELD = "[text withheld: it repeats a secret]"


def _connection(**env: str) -> Connection:
    return Connection(Destination(command="session-buddy-test", env=tuple(env.items())))


def _start(component: str, **fields: Any) -> tuple[dict[str, Any], str]:
    """A start event of `component` and the id the real server makes of it."""
    event = dict(
        events.build_start_event(component_name=component, shell_type="S", metadata=None, limits=Limits())
    )
    event.update(fields)
    return event, f"{component}-20261207-211719"


# --- 1. a real id refused: a component under 4 characters, a number under a secret's name ---------


@pytest.mark.parametrize(
    ("component", "env"),
    [
        ("api", {"AUTH_KEY_ID": "api-2026"}),
        ("db", {"SSH_KEY_NAME": "db-20261207"}),
        ("oneiric", {"TOKEN_TTL_MS": "211719"}),
    ],
)
def test_an_id_of_the_real_servers_shape_is_kept(component: str, env: dict[str, str]) -> None:
    """Only event strings of 4 characters or more were taken out of the id, and a secret-named
    value found whole counted: every start of `api` (or at 21:17:19) became a dead letter."""
    event, session_id = _start(component)
    assert not _connection(**env).repeats_secret(session_id, besides=event)


# --- 2. a name under a secret's name withheld every message repeating 12 of its characters -------


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"GIT_AUTHOR_NAME": "oneiric-session-bot"}, "session oneiric-session-20261207-211719 not found"),
        ({"OAUTH_CLIENT_ID": "session-buddy-cli"}, "session-buddy 0.9.1: database is locked (retry later)"),
        (
            {"PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring"},
            "keyring.backends.SecretService: no D-Bus session bus",
        ),
    ],
)
def test_a_name_under_a_secrets_name_does_not_withhold_messages_sharing_its_words(
    env: dict[str, str], said: str
) -> None:
    assert _connection(**env).scrub(said) == said


# --- 3. a real secret read as a path or a url: none of it counted ---------------------------------


@pytest.mark.parametrize(
    ("env", "said", "piece"),
    [
        ({"AUTH_PASSWORD": "~Kj#8pL!2qRz$5vW"}, "login failed, password=~Kj#8pL!2qRz$...", "Kj#8pL!2qRz$"),
        (
            {"AUTH_DB_URL": "postgres://svc:hVkQpZmWtRbNxJsL@db:5432/auth"},
            "config: user='svc' password='hVkQpZmWtRbNxJsL' host='db'",
            "hVkQpZmWtRbN",
        ),
    ],
)
def test_a_secret_starting_like_a_path_or_a_urls_password_is_not_shown(
    env: dict[str, str], said: str, piece: str
) -> None:
    assert piece not in _connection(**env).scrub(said)


# --- 4. a secret split by a control character, whole again once it is taken out -------------------


@pytest.mark.parametrize("split", ["\x1b[0m", "\x00", "\u200e"])
def test_a_secret_split_by_a_control_character_is_not_shown(split: str) -> None:
    connection = _connection(SESSION_BUDDY_SECRET="Kj8pL2qRz5vWx4Tn")
    said = connection.scrub(f"auth failed: Kj8pL2qR{split}z5vWx4Tn")
    assert "Kj8pL2qRz5vWx4Tn" not in said and "Kj8pL2qR" not in said, said
    event, _ = _start("oneiric-session")
    assert connection.repeats_secret(
        f"oneiric-session-20261207-211719-Kj8pL2qR{split}z5vWx4Tn", besides=event
    )


# --- 5. a secret holding an event string: taken apart by taking the string out --------------------


@pytest.mark.parametrize("password", ["alice!Spring2026xyz", "Kq7#devbox#Zp9!Lm2$"])
def test_a_session_id_that_is_a_secret_holding_an_event_string_is_refused(password: str) -> None:
    event, _ = _start("c", hostname="devbox", user={"username": "alice", "home": "/home/alice"})
    assert _connection(AUTH_PASSWORD=password).repeats_secret(password, besides=event)


# --- 6. stalls ------------------------------------------------------------------------------------


def test_a_cyclic_event_ends() -> None:
    """_without_strings_of walked a cyclic event for ever (run in a thread: a failure is a
    thread still running, not a hung suite)."""
    import threading

    event, _ = _start("c")
    looped: dict[str, Any] = {}
    looped["self"] = looped
    event["metadata"] = looped
    answers: list[bool] = []
    connection = _connection(AUTH_PASSWORD="Kq7#zz-Zp9!Lm2$")
    worker = threading.Thread(
        target=lambda: answers.append(connection.repeats_secret("c-x-Kq7#zz-Zp9!Lm2$", besides=event)),
        daemon=True,
    )
    worker.start()
    worker.join(30)
    assert answers == [True]
