"""Token checks of the bundled server, in process (the rules) and as a real subprocess (the answers)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from oneiric_session.errors import ConfigError
from oneiric_session.server.auth import TOKEN_INVALID, TOKEN_REQUIRED, TokenVerifier, secret_from_env
from tests.support.server_process import (
    SERVE,
    ServerConnection,
    connect,
    end_event,
    isolated_env,
    start_event,
    structured_answer,
    text_of,
)

# 64 characters: long enough for the HS512 case below to raise no key-length warning.
SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 2 + "0123456789"


def token(*, secret: str = SECRET, omit: tuple[str, ...] = (), **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": "session-buddy",
        "sub": "tester",
        "aud": "session-buddy",
        "iat": now,
        "exp": now + 3600,
        "jti": str(uuid.uuid4()),
        "scopes": ["read"],
    }
    payload.update(claims)
    for name in omit:
        del payload[name]
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.mark.parametrize("issuer", ["mahavishnu", "session-buddy", "akosha", "dhara", "crackerjack"])
def test_every_allowed_issuer_is_accepted(issuer: str) -> None:
    assert TokenVerifier(SECRET).failure(token(iss=issuer)) is None


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (None, TOKEN_REQUIRED),
        ("", TOKEN_REQUIRED),
        ("not.a.jwt", TOKEN_INVALID),
        (token(exp=int(time.time()) - 60), TOKEN_INVALID),
        (token(iat=int(time.time()) + 3600), TOKEN_INVALID),
        (token(aud="akosha"), TOKEN_INVALID),
        (token(iss="mallory"), TOKEN_INVALID),
        (token(secret="another-secret-of-sufficient-length-000"), TOKEN_INVALID),
        (token(omit=("exp",)), TOKEN_INVALID),
        (token(omit=("iat",)), TOKEN_INVALID),
        (token(omit=("iss",)), TOKEN_INVALID),
        (
            jwt.encode({"aud": "session-buddy", "iss": "dhara", "iat": 0, "exp": 2**40}, SECRET, "HS512"),
            TOKEN_INVALID,
        ),
    ],
    ids=[
        "none",
        "empty",
        "garbage",
        "expired",
        "future-iat",
        "audience",
        "issuer",
        "secret",
        "no-exp",
        "no-iat",
        "no-iss",
        "hs512",
    ],
)
def test_bad_tokens_get_the_real_servers_messages(bad: str | None, expected: str) -> None:
    assert TokenVerifier(SECRET).failure(bad) == expected


def test_secret_rules() -> None:
    """Unset or empty means off; the second variable is the fallback; weak secrets are refused."""
    assert secret_from_env({}) is None
    assert secret_from_env({"SESSION_BUDDY_SECRET": ""}) is None
    assert secret_from_env({"BODAI_SHARED_SECRET": SECRET}) == SECRET
    assert secret_from_env({"SESSION_BUDDY_SECRET": SECRET, "BODAI_SHARED_SECRET": "x" * 40}) == SECRET
    with pytest.raises(ConfigError, match=r"SESSION_BUDDY_SECRET is too short \(10 characters\)"):
        secret_from_env({"SESSION_BUDDY_SECRET": "0123456789"})
    with pytest.raises(ConfigError, match="placeholder"):
        secret_from_env({"BODAI_SHARED_SECRET": "changeme"})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerConnection]:
    with connect(home=home, db=home / "s.sqlite3", env={"SESSION_BUDDY_SECRET": SECRET}) as connection:
        yield connection


def test_a_valid_token_is_accepted_on_start_and_end(server: ServerConnection) -> None:
    started = structured_answer(server.call("track_session_start", start_event(token=token())))
    assert started["status"] == "tracked"
    ended = structured_answer(
        server.call("track_session_end", end_event(started["session_id"], token=token()))
    )
    assert ended["status"] == "ended"


@pytest.mark.parametrize(
    ("make_token", "detail"),
    [
        (lambda: None, "Token required"),
        (lambda: token(exp=int(time.time()) - 60), "invalid or expired token"),
        (lambda: token(aud="mahavishnu"), "invalid or expired token"),
        (lambda: token(iss="unknown-service"), "invalid or expired token"),
    ],
    ids=["missing", "expired", "wrong-audience", "wrong-issuer"],
)
def test_refused_tokens_answer_authentication_failed(
    server: ServerConnection, make_token: Any, detail: str
) -> None:
    """isError with the real server's text, on both tools; nothing is recorded."""
    bad = make_token()
    recorded_before = text_of(server.call("health_check", {}))
    for tool, arguments in (
        ("track_session_start", start_event(component_name="refused", token=bad)),
        ("track_session_end", end_event("refused-20260206-123456", token=bad)),
    ):
        result = server.call(tool, arguments)
        assert result.is_error
        assert result.structured_content is None
        assert "Authentication failed" in text_of(result)
        assert detail in text_of(result)
    assert text_of(server.call("health_check", {})) == recorded_before


def test_the_token_never_reaches_the_servers_output(server: ServerConnection, home: Path) -> None:
    """Refused and accepted tokens alike stay out of the log (stderr) and the database."""
    expired = token(exp=int(time.time()) - 60)
    good = token()
    server.call("track_session_start", start_event(component_name="secretive", token=expired))
    server.call("track_session_start", start_event(component_name="secretive", token=good))
    log = (home / "server.stderr").read_text()
    assert "token refused" in log  # the failure itself is logged, by reason
    for value in (expired, good, SECRET):
        assert value not in log
        for path in home.glob("s.sqlite3*"):
            assert value.encode() not in path.read_bytes()


def _serve(home: Path, secret: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, "--db", str(home / "s.sqlite3"), *extra],
        env=isolated_env(home, {"SESSION_BUDDY_SECRET": secret}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_short_secret_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    result = _serve(tmp_path, "too-short")
    assert result.returncode == 2
    assert "SESSION_BUDDY_SECRET is too short (9 characters); at least 32 are required" in result.stderr
    assert "too-short" not in result.stderr.replace("SESSION_BUDDY_SECRET is too short", "")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
