"""Review Y of c91e6b0 (and 293abf8, 8ec3ef6): five defects, each test failed before its fix."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_clock import one_start_worker
from tests.support.faults import start_refused_by

SERVER_SECRET = "Server-Env-Secret-" + "0123456789abcdef" * 2

_ID_ANSWER = """
async def answer(tool, payload):
    said = {{"status": "tracked", "session_id": {session_id}}}
    return fs.tool_result(json.dumps(said), structured=said)
"""


class _StrRaises(Exception):
    """A foreign error whose __str__ fails (an exception built with args its __str__ does not
    expect: a library's, unpickled, ...)."""

    def __str__(self) -> str:
        raise AttributeError("'_StrRaises' object has no attribute 'url'")


def _connection() -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    return Connection(Destination(command="session-buddy-test", env=(("API_TOKEN", SERVER_SECRET),)))


# --- 1. Connection._map raises (not a DeliveryError) for an error whose __str__ fails -------------


def test_map_of_an_error_whose_str_raises_is_still_a_delivery_error() -> None:
    """`Connection.call`/`open` promise DeliveryError types only. Before c91e6b0 `_map` logged the
    error with exc_info (logging's traceback prints `<exception str() failed>`); now
    redacted_traceback calls `str(each)` itself and the AttributeError escapes `_map`."""
    from oneiric_session.errors import DeliveryError

    try:
        raise _StrRaises()
    except _StrRaises as exc:
        mapped = _connection()._map(exc, "calling track_session_start")
    assert isinstance(mapped, DeliveryError)


# --- 2. The worker crashes on a bug whose __str__ raises ------------------------------------------


async def test_a_bug_whose_str_raises_is_recorded_not_a_crash_of_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """worker._failed computes `str(exc)` before it replaces a foreign error's message with
    'unexpected TYPE': the __str__ that raises stops the destination's drain, the row's failure is
    never recorded, and what `destinations._done` logs is the new error's text, unscrubbed."""

    def answer(tool: str, event: Mapping[str, Any]) -> str:
        raise _StrRaises()

    spool, worker = one_start_worker(tmp_path, answer)
    try:
        with caplog.at_level(logging.WARNING, logger="oneiric_session"):
            await worker.drain(replaying=False, stopping=lambda: False)
        assert worker.failures == 1
        assert worker.last_error == "unexpected _StrRaises (the agent's log says where)"
    finally:
        spool.close()


# --- 3. An exception group from a bug: the log no longer says where ------------------------------


def _helper_that_has_the_bug() -> None:
    {}["missing"]  # (the bug: where the log should point)


async def test_a_bug_inside_an_exception_group_is_still_located_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug below the worker raised out of a TaskGroup arrives as an ExceptionGroup. The stored
    message says 'the agent's log says where'; logger.exception (before c91e6b0) printed the
    sub-exception's traceback; redacted_traceback follows only __cause__/__context__, so the log
    holds the TaskGroup's frames and 'ExceptionGroup: (message not shown...)': neither the
    KeyError nor the function it came from."""

    def answer(tool: str, event: Mapping[str, Any]) -> str:
        try:
            _helper_that_has_the_bug()
        except KeyError as exc:  # as a TaskGroup raises it
            raise ExceptionGroup("unhandled errors in a TaskGroup", [exc]) from None
        raise AssertionError("unreachable")

    spool, worker = one_start_worker(tmp_path, answer)
    try:
        with caplog.at_level(logging.WARNING, logger="oneiric_session"):
            await worker.drain(replaying=False, stopping=lambda: False)
    finally:
        spool.close()
    assert worker.failures == 1
    assert "_helper_that_has_the_bug" in caplog.text, caplog.text
    assert "KeyError" in caplog.text, caplog.text


# --- 4. A legitimate session id refused as "repeats a secret" ------------------------------------


def test_a_session_id_sharing_a_path_word_with_a_secret_named_setting_is_not_refused(tmp_path: Path) -> None:
    """`check` sends component 'oneiric-session-check'; the bundled (and the real) server answers
    '<component>-<YYYYmmdd-HHMMSS>'. A server.env variable named like a secret that holds a path
    (a token file under the user's oneiric-session config directory) has the 8+ character run
    'oneiric-session': withheld()'s run rule says the id 'repeats a secret', and check fails as
    'rejected' (the agent dead-letters every start of such a component)."""
    exc = start_refused_by(
        tmp_path,
        _ID_ANSWER.format(session_id='"oneiric-session-check-20261207-120000"'),
        {"SESSION_BUDDY_TOKEN_FILE": "/home/alice/.config/oneiric-session/token"},
    )
    assert exc is None, repr(exc)


# --- 5. A secret a server's validation error shows cut in the middle (pydantic) ------------------

HEX_SECRET = "5f2b9c1e8d7a4b3c6e0f1a2b3c4d5e6f" + "a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c"  # openssl rand -hex 32

_FAILING_SERVER = """
import sys
from pydantic import BaseModel, Field
import os

class Settings(BaseModel):  # a server checking its settings at start-up (pydantic-settings does)
    session_buddy_secret: str = Field(pattern=r"^[0-9A-F]{{64}}$")  # (wants it upper-case)

try:
    Settings(session_buddy_secret=os.environ["SESSION_BUDDY_SECRET"])
except Exception as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def test_a_secret_a_server_shows_truncated_in_the_middle_is_not_repeated(tmp_path: Path) -> None:
    """pydantic (v2) shows a long input cut in the middle: `input_value='<24 chars>...<24
    chars>'`. A stdio server that refuses its settings at start-up prints that to stderr; the
    stderr tail goes through Connection.scrub into the error, the log, the spool and `status`.
    Neither a form (the whole secret) nor withheld()'s rule (a whole run of the secret) matches
    48 of its 64 characters."""
    import asyncio
    import sys

    from oneiric_session.tracking import events
    from oneiric_session.tracking.destination import Destination, Tuning
    from oneiric_session.tracking.limits import Limits
    from oneiric_session.transport.client import SessionBuddyClient

    script = tmp_path / "failing_server.py"
    script.write_text(_FAILING_SERVER.format())
    destination = Destination(
        command=sys.executable,
        args=(str(script),),
        env=(("HOME", str(tmp_path)), ("SESSION_BUDDY_SECRET", HEX_SECRET)),
        cwd=str(tmp_path),
        tuning=Tuning(attempts=1, connect_seconds=20.0),
    )
    start = events.build_start_event(component_name="c", shell_type="S", metadata=None, limits=Limits())

    async def attempt() -> str:
        async with SessionBuddyClient(destination) as client:
            try:
                await client.start_session(start)
            except Exception as exc:
                return str(exc)
        return "(no error)"

    said = asyncio.run(attempt())
    assert "input_value" in said or "stderr" in said, said  # the server's stderr is repeated
    assert not _pieces_of(HEX_SECRET, said), said


def _pieces_of(secret: str, text: str, size: int = 16) -> list[str]:
    """The runs of `size` characters of `secret` that stand in `text`."""
    return sorted(
        {secret[i : i + size] for i in range(len(secret) - size + 1)}
        & {text[i : i + size] for i in range(len(text) - size + 1)}
    )


def test_scrub_cuts_a_secret_shown_cut_in_the_middle() -> None:
    """The same, on Connection.scrub alone (what `_tail`, `_map` and redacted_traceback use)."""
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="x", env=(("SESSION_BUDDY_SECRET", HEX_SECRET),)))
    shown = f"input_value='{HEX_SECRET[:24]}...{HEX_SECRET[-24:]}', input_type=str"
    said = connection.scrub(shown)
    assert not _pieces_of(HEX_SECRET, said), said
