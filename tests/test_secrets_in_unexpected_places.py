"""Secrets where the last stops left them: a session id a server answers, the log of an error the
transport did not expect, and a bug's error in the agent's worker (each test failed before its fix)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import start_refused_by

SERVER_SECRET = "Server-Env-Secret-" + "0123456789abcdef" * 2

_ID_ANSWER = """
async def answer(tool, payload):
    said = {{"status": "tracked", "session_id": {session_id}}}
    return fs.tool_result(json.dumps(said), structured=said)
"""


@pytest.mark.parametrize(
    "session_id",
    [
        'os.environ["SESSION_BUDDY_SECRET"]',
        '"c-20261207-" + os.environ["SESSION_BUDDY_SECRET"]',
        'json.dumps(os.environ["SESSION_BUDDY_SECRET"])',  # quoted: a form, not the value as given
    ],
)
def test_a_session_id_that_repeats_a_secret_is_refused_and_not_kept(tmp_path: Path, session_id: str) -> None:
    """The id is stored in the spool and printed by `check`: a server.env secret in it would be
    on disk and on screen. The server recorded the session: a dead letter says why."""
    from oneiric_session.errors import RejectedError

    exc = start_refused_by(
        tmp_path, _ID_ANSWER.format(session_id=session_id), {"SESSION_BUDDY_SECRET": SERVER_SECRET}
    )
    assert isinstance(exc, RejectedError), repr(exc)
    assert SERVER_SECRET not in str(exc), str(exc)
    assert "secret" in str(exc)


def test_a_short_secret_in_a_session_id_is_a_word_not_a_secret(tmp_path: Path) -> None:
    """SESSION_BUDDY_REQUIRE_AUTH=1 is a server.env value under a secret's name; the bundled
    server's second session of a second ends in "-2", of a component "-1" may too."""
    exc = start_refused_by(
        tmp_path, _ID_ANSWER.format(session_id='"c-20261207-120000-1"'), {"SESSION_BUDDY_REQUIRE_AUTH": "1"}
    )
    assert exc is None, repr(exc)


_AS_RECORDED = """
async def answer(tool, payload):
    return fs.tool_result(json.dumps(payload), structured=payload)
"""


@pytest.mark.parametrize(
    "env",
    [{"SESSION_BUDDY_AUTH_ISSUER": "mahavishnu"}, {"GIT_AUTHOR_NAME": "mahavishnu-admin"}],
)
def test_a_value_under_a_secrets_name_that_the_event_gave_is_kept_in_the_id(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The real server makes the id of the component name ("mahavishnu-20261207-120000"): a
    server.env value under a secret's name that is the component name (an issuer, an author) is
    in the event the spool holds anyway; refusing the id would dead-letter every session."""
    exc = start_refused_by(tmp_path, _AS_RECORDED, env, component_name="mahavishnu-admin")
    assert exc is None, repr(exc)


def test_an_unexpected_errors_log_holds_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    """A foreign error the transport does not map: its traceback went to the log whole, with the
    message of each error in its chain, where an HTTP library repeats the url it was given."""
    from oneiric_session.errors import ServerUnavailableError
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="session-buddy-test", env=(("API_TOKEN", SERVER_SECRET),)))
    try:
        try:
            raise LookupError(f"no route for {SERVER_SECRET}")
        except LookupError as inner:
            raise RuntimeError(f"while sending with {SERVER_SECRET}") from inner
    except RuntimeError as exc:
        with caplog.at_level(logging.WARNING, logger="oneiric_session"):
            mapped = connection._map(exc, "calling track_session_start")
    assert isinstance(mapped, ServerUnavailableError)
    logged = caplog.text
    assert SERVER_SECRET not in logged, logged
    assert "RuntimeError: while sending with [secret]" in logged, logged
    assert "LookupError: no route for [secret]" in logged, logged
    assert "test_secrets_in_unexpected_places.py" in logged, logged  # where: its frames are kept


async def test_a_bug_below_the_worker_keeps_its_message_out_of_log_spool_and_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a DeliveryError: a bug below the worker. Its message went to the log (logger.exception)
    and into the spool as the row's last error, which `status` and `spool list` show."""
    from tests.support.fake_clock import one_start_worker

    def answer(tool: str, event: Mapping[str, Any]) -> str:
        raise KeyError(f"Authorization: Bearer {SERVER_SECRET}")

    spool, worker = one_start_worker(tmp_path, answer)
    with caplog.at_level(logging.WARNING, logger="oneiric_session"):
        await worker.drain(replaying=False, stopping=lambda: False)
    spool.close()
    assert worker.failures == 1 and worker.last_error is not None
    assert "KeyError" in worker.last_error and SERVER_SECRET not in worker.last_error
    assert SERVER_SECRET not in caplog.text, caplog.text
    assert "KeyError: (message not shown" in caplog.text, caplog.text
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SERVER_SECRET.encode() not in on_disk
    assert b"unexpected KeyError" in on_disk


@pytest.mark.parametrize("command", ["who", "last"])
def test_who_and_last_over_a_url_withhold_a_listed_value_that_repeats_the_token(
    tmp_path: Path, command: str
) -> None:
    """A central server lists what anyone recorded: a session id or host that repeats the token
    `who --url` sent it was printed as it came."""
    import os
    import subprocess
    import sys

    from tests.support.faults import isolated_env
    from tests.support.http_server import listing_server

    token = "eyJhbGciOiJIUzI1NiJ9." + "listed-token-" + "0123456789abcdef" * 2
    with listing_server(tmp_path, LISTING_MODE="echo_token") as url:
        said = subprocess.run(
            [sys.executable, "-m", "oneiric_session", command, "--url", url, "--json"],
            env={**os.environ, **isolated_env(tmp_path), "SESSION_BUDDY_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert said.returncode == 0, said.stderr
    assert "listed-token" not in said.stdout + said.stderr, said.stdout
    assert "[withheld: it repeats a secret]" in said.stdout, said.stdout
