"""Review Z of c91e6b0, 3b4d316, 798a675 and f589c42: each test fails on f589c42."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import start_refused_by

HEX_SECRET = "5f2b9c1e8d7a4b3c6e0f1a2b3c4d5e6f" + "a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c"  # openssl rand -hex 32

_ID_ANSWER = """
async def answer(tool, payload):
    said = {{"status": "tracked", "session_id": {session_id}}}
    return fs.tool_result(json.dumps(said), structured=said)
"""


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# A realistic HS256 JWT (what the bundled server and Session-Buddy check) and a provider key.
JWT = (
    _b64({"alg": "HS256", "typ": "JWT"})
    + "."
    + _b64(
        {
            "sub": "alice",
            "iss": "session-buddy",
            "aud": "session-buddy",
            "exp": 1893456000,
            "iat": 1700000000,
            "scope": "sessions:write sessions:read",
            "groups": ["dev"] * 20,
        }
    )
    + "."
    + "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"[:43]
)
API_KEY = "sk-proj-" + "Qw3rTy7uIoP9aSdF2gHjK4lZxC6vBnM8" * 4


def _connection(env: tuple[tuple[str, str], ...], token: str | None = None) -> Any:
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="session-buddy-test", env=env))
    if token:
        connection._tokens.add(token)  # (as `call` does when it sends it)
    return connection


# --- 1. withheld's piece rule (f589c42) makes scrub ~100x slower on a large server message -------


def test_scrub_looks_at_a_bounded_start_of_a_large_server_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MCP error message (`_map`), an error answer's text (`answers._refuse`) or a foreign
    error's str (`redacted_traceback`) may be as long as one answer line (MAX_LINE_BYTES, 4 MiB).
    `scrub` ran `withheld` on the whole text before `server_text` capped it at 300 characters;
    withheld searches the text once per piece of every secret (a JWT and a provider key: ~700
    pieces): 1.03 s for 4 MiB on f589c42 (0.015 s on 84fda4c), on the agent's event loop, so every
    destination waits. Checked by what withheld is given, not by a clock."""
    from oneiric_session.transport import connection as connection_module

    seen: list[int] = []
    real = connection_module.withheld

    def recording(text: str, values: Any) -> str:
        seen.append(len(text))
        return real(text, values)

    monkeypatch.setattr(connection_module, "withheld", recording)
    connection = _connection((("SESSION_BUDDY_SECRET", HEX_SECRET), ("OPENAI_API_KEY", API_KEY)), JWT)
    said = connection.scrub("Session start failed: " + "y" * (4 * 1024 * 1024))
    assert said.startswith("Session start failed")
    assert seen and max(seen) <= 8192, seen


# --- 2. redacted_traceback recurses once per nested exception group -------------------------------


def _nested_group(depth: int, leaf: BaseException) -> BaseExceptionGroup[Any]:
    exc: BaseException = leaf
    for level in range(depth):
        exc = ExceptionGroup(f"level {level}", [exc])
    assert isinstance(exc, ExceptionGroup)
    return exc


def test_bug_report_of_a_deeply_nested_exception_group_does_not_raise() -> None:
    """`traceback` itself caps a group's depth (10) and width (15); redacted_traceback recurses
    (chained -> one -> chained) with no cap: RecursionError out of `bug_report`, i.e. out of
    worker._log_unexpected (the drain dies before `_failed` records the row) and then out of
    destinations._done (retry_at never set, status never published)."""
    from oneiric_session.agent.worker import bug_report

    report = bug_report(_nested_group(300, KeyError("missing")))
    assert "nested deeper, not shown" in report  # (as Python's own traceback stops at depth 10)
    assert len(report) < 20_000, len(report)
    wide = bug_report(ExceptionGroup("wide", [KeyError(n) for n in range(20_000)]))
    assert "KeyError" in wide and "and 19985 more, not shown" in wide
    assert len(wide) < 20_000, len(wide)


def test_map_of_an_error_raised_while_handling_a_deep_group_is_a_delivery_error() -> None:
    """`Connection._map` promises a DeliveryError (review Y fixed it for a failing __str__): an
    error raised while handling a deeply nested group makes it raise RecursionError instead."""
    from oneiric_session.errors import DeliveryError

    try:
        try:
            raise _nested_group(300, LookupError("inner"))
        except ExceptionGroup:
            raise RuntimeError("while handling it")  # noqa: B904 (its context: the group)
    except RuntimeError as exc:
        mapped = _connection(())._map(exc, "calling track_session_start")
    assert isinstance(mapped, DeliveryError)


async def test_a_worker_records_a_bug_raised_as_a_deep_exception_group(tmp_path: Path) -> None:
    """The same through the worker: the drain dies with RecursionError instead of recording the
    row's failure (and `_done`, logging it with bug_report, raises again)."""
    from collections.abc import Mapping

    from tests.support.fake_clock import one_start_worker

    def answer(tool: str, event: Mapping[str, Any]) -> str:
        raise _nested_group(300, KeyError("missing"))

    spool, worker = one_start_worker(tmp_path, answer)
    try:
        await worker.drain(replaying=False, stopping=lambda: False)
        assert worker.failures == 1
    finally:
        spool.close()


# --- 3. a session id holding most of a secret is kept (stored in the spool, printed by check) -----


@pytest.mark.parametrize(
    "session_id",
    [
        # pydantic's shape: the same 48 of 64 characters f589c42 withholds in a message
        'f"input_value={s[:24]!r}...{s[-24:]!r}"',
        # a prefix of the secret (a server cutting a value to make an id)
        '"c-20261207-120000-" + s[:40]',
    ],
)
def test_a_session_id_holding_most_of_a_secret_is_not_kept(tmp_path: Path, session_id: str) -> None:
    """f589c42 made `scrub` withhold a text holding any 8 characters in a row of a secret (a
    server showed 48 of its 64 cut in the middle), but `_holds` (the session id check) takes the
    secret only whole: the same 48 characters, or 40, in a session id are stored in the spool,
    sent back with the end and printed by `check` / `spool list`."""
    from oneiric_session.errors import RejectedError

    answer = _ID_ANSWER.format(session_id=session_id).replace(
        "async def answer(tool, payload):\n",
        "async def answer(tool, payload):\n    s = os.environ['SESSION_BUDDY_SECRET']\n",
    )
    exc = start_refused_by(tmp_path, answer, {"SESSION_BUDDY_SECRET": HEX_SECRET})
    assert isinstance(exc, RejectedError), repr(exc)
    assert HEX_SECRET[:24] not in str(exc)


# --- 4. withheld's piece rule withholds a stdio server's stderr for a name the event gave --------


def test_a_stderr_tail_naming_the_component_is_not_withheld_for_an_author_name() -> None:
    """798a675's own example: server.env GIT_AUTHOR_NAME=mahavishnu-admin (a secret by its name,
    'auth'), component 'mahavishnu'. The id 'mahavishnu-20261207-120000' is accepted (the event
    holds the name), but any server text naming that id or component ('session started:
    mahavishnu-...' in the last stderr lines the error repeats) is now withheld whole: 'mahavish'
    is 8 characters of the run 'mahavishnu-admin'. Before f589c42 (whole run) it was shown."""
    connection = _connection((("GIT_AUTHOR_NAME", "mahavishnu-admin"),))
    tail = (
        "INFO session started: mahavishnu-20261207-120000 (zsh) | "
        "sqlite3.OperationalError: database is locked | "
        "ERROR Session start failed"
    )
    said = connection.scrub(tail)
    assert "database is locked" in said, said
