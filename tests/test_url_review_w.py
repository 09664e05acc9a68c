"""Review W: defects in e147d2e, db32e4d and bb689b9 (each test fails on bb689b9)."""

from __future__ import annotations

import json
import os

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import Scene

CAPS = (10_000, 64 * 1024 * 1024, 30 * 86400.0)


def _write_record(scene: Scene, handle: str) -> str:
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name="c", shell_type="S", metadata=None, limits=Limits())
    assert Outbox(scene.spool_path, caps=CAPS).append_start(
        handle, destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    return f"{handle}.start"


# --- 1. a record the agent takes in between the listing and the read is called "never read" -----


def test_a_record_taken_in_while_it_is_listed_is_no_unread_record(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent takes a record in and deletes it at any moment (a shell just started, a wake-up):
    `unread_records` lists the outbox, then opens each name; the one deleted meanwhile raises
    FileNotFoundError, an OSError, and is reported as never read ('No such file or directory'), so
    `status` warns and `spool list` / `spool replay` exit 1 for a record that was delivered."""
    from oneiric_session.spool import outbox_reader

    name = _write_record(scene, "local-taken")
    directory = outbox_dir(scene.spool_path)
    real = outbox_reader.record_names

    def listed_then_taken_in(where: str) -> list[str] | None:
        names = real(where)
        os.unlink(os.path.join(directory, name))  # the agent's take-in, just after this listing
        return names

    monkeypatch.setattr(outbox_reader, "record_names", listed_then_taken_in)
    assert outbox_reader.unread_records(scene.spool_path) is None


# --- 2. a secret the server quotes as JSON (or repr) inside its answer is escaped twice ----------

TWICE_ESCAPED = [
    ("S\u00ebrver-Secret-0123456789abcdef-xxxxxxxx", json.dumps),  # a detail holding JSON
    ("Server\\Secret-0123456789abcdef-xxxxxxxx", repr),  # a detail holding a repr (pydantic's input_value)
]


@pytest.mark.parametrize(("secret", "quote"), TWICE_ESCAPED, ids=["json-in-json", "repr-in-json"])
def test_a_secret_quoted_by_the_server_inside_an_unrecognised_answer_is_cut(
    secret: str, quote: object
) -> None:
    """bb689b9 adds the forms a secret takes once escaped (`json.dumps(form)`, `repr(form)`), but
    `_read` cleans `json.dumps(payload)`: a server whose detail already holds the secret quoted (its
    environment as JSON, a validation message's repr) has it escaped twice, `\\\\u00eb` / `\\\\\\\\`,
    and the part after the first escaped character reaches the RejectedError (the dead letter)."""
    from oneiric_session.errors import RejectedError
    from oneiric_session.mcp_compat import answer_view, tool_result
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.answers import read_start_answer
    from oneiric_session.transport.connection import Connection

    connection = Connection(Destination(command="sb", env=(("SESSION_BUDDY_SECRET", secret),)))
    said = {
        "session_id": None,
        "status": "refused",
        "detail": "env: " + quote({"SESSION_BUDDY_SECRET": secret}),
    }
    answer = answer_view(tool_result(json.dumps(said), structured=said))
    with pytest.raises(RejectedError) as caught:
        read_start_answer(answer, clean=connection.scrub)
    assert "0123456789abcdef" not in str(caught.value), str(caught.value)


# --- 3. an older row's unclear url whose password holds a raw '?' (or '#'): kept and sent ---------

PASSWORD_TAIL = "Secret-Passw0rd-" + "0123456789abcdef"


@pytest.mark.parametrize("mark", ["?", "#"])
def test_an_older_rows_unclear_url_with_a_raw_question_mark_in_its_password_keeps_no_tail_on_disk(
    tmp_path, mark: str
) -> None:
    """review V's second defect with `?` (or `#`) where V's test has `/`: `alice:2024?<tail>@host`
    is host `alice`, port 2024 and the query `<tail>@host...` to RFC 3986. may_hide_password looks
    for the `@` only before any `?` or `#` (shown_url's own doc: 'a password may hold those, raw'),
    so url_at_rest keeps the url whole, and the tail stays on disk after rekey."""
    from tests.support.older_version import urls_after_rekey

    stored = urls_after_rekey(Scene(tmp_path), f"http://alice:2024{mark}{PASSWORD_TAIL}@127.0.0.1:9/mcp")
    assert not [u for u in stored if PASSWORD_TAIL in u], stored


def test_an_older_rows_unclear_url_sends_no_password_tail_after_a_raw_question_mark(tmp_path) -> None:
    """The same url, delivered: unusable_url finds the port a number and may_hide_password no `@`
    before the `?`, so the agent connects to the user's name (host `localhost`, port = the
    password's digits) and sends the password's tail as the query."""
    from tests.support.older_version import first_request_to

    # Meant as user `localhost`, password `<port>?<tail>`, server 127.0.0.1:9.
    sent = first_request_to(
        Scene(tmp_path), lambda port: f"http://localhost:{port}?{PASSWORD_TAIL}@127.0.0.1:9/mcp"
    )
    assert PASSWORD_TAIL not in sent, sent[:300]


# --- 4. the unread-record warning's remedy cannot be followed ---------------------------------------

USER_UID = 4242  # the user whose outbox it is; this test runs as root, the owner of the record


def test_the_unread_record_warning_gives_no_remedy_that_cannot_be_followed(tmp_path) -> None:
    """unread_records said 'a shell run as another user (sudo keeping HOME) writes such records:
    deliver them as that user'. But a shell run as root into a user's spool refuses it (its
    directory is another user's), so it writes no such record; and when one is there, its owner's
    `spool replay` refuses the outbox the same way. Removing it is all that can be done."""
    scene = Scene(tmp_path)
    name = _write_record(scene, "local-root")  # root's record (written while the tree was root's)
    os.chown(os.path.join(outbox_dir(scene.spool_path), name), USER_UID, USER_UID)
    listing = scene.run("spool", "list")
    assert listing.returncode == 1 and name in listing.stdout, listing.stdout
    assert "sudo" not in listing.stdout and "deliver them as" not in listing.stdout, listing.stdout
    assert "remove them" in listing.stdout, listing.stdout


def test_who_url_cuts_a_secret_a_non_python_json_encoder_escaped() -> None:
    """The raw text `who --url` repeats (`clean(texts)`) is the server's own JSON: an encoder that
    escapes non-ASCII with upper-case hex (`\\u00EB`: Jackson, System.Text.Json) or escapes `/` as
    `\\/` (PHP) writes a form `secret_forms` does not hold (Python's lower-case `\\u00eb` only)."""
    from oneiric_session.cli._who_query import RemoteError, _read_page
    from oneiric_session.mcp_compat import answer_view, tool_result
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    secret = "S\u00ebrver-Secret-0123456789abcdef-xxxxxxxx"
    url = f"http://127.0.0.1:9/mcp?access_token={secret}"
    connection = Connection(Destination(transport="http", url=url))
    said = '{"detail": "S\\u00EBrver-Secret-0123456789abcdef-xxxxxxxx"}'
    with pytest.raises(RemoteError) as caught:
        _read_page(answer_view(tool_result(said)), None, connection.scrub)
    assert "0123456789abcdef" not in str(caught.value), str(caught.value)
