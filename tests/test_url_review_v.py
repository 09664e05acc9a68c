"""Review V: regressions and gaps in the review U fixes (each test failed before its fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.delivery import Scene

# --- 1. a secret a tool answer repeats reaches the error through json.dumps' escaping ----------

# A server.env secret with a non-ASCII letter, a backslash or a quote: json.dumps writes it
# \u00eb / \\ / \", where Connection.scrub looks for the value as written.
ESCAPED_SECRETS = [
    "S\u00ebrver-Secret-0123456789abcdef-" + "x" * 8,
    "Server\\Secret-0123456789abcdef-" + "x" * 8,
    'Server"Secret-0123456789abcdef-' + "x" * 8,
]
_STATUS_ECHO_ANSWER = """
async def answer(tool, payload):
    # a status this client does not know, the server's secret repeated in a field of the answer
    secret = os.environ["SESSION_BUDDY_SECRET"]
    said = {"session_id": None, "status": "refused", "detail": "SESSION_BUDDY_SECRET=" + secret}
    return fs.tool_result(json.dumps(said), structured=said)
"""


@pytest.mark.parametrize("secret", ESCAPED_SECRETS, ids=["non-ascii", "backslash", "quote"])
def test_a_secret_in_an_unrecognised_answer_is_not_in_the_error(tmp_path: Path, secret: str) -> None:
    from oneiric_session.errors import RejectedError
    from tests.support.faults import start_refused_by

    exc = start_refused_by(tmp_path, _STATUS_ECHO_ANSWER, {"SESSION_BUDDY_SECRET": secret})
    assert isinstance(exc, RejectedError), repr(exc)
    said = str(exc)
    assert "0123456789abcdef" not in said, said


# --- 2. an unclear older url whose password tail RFC 3986 reads as a port and a path -----------

PASSWORD_TAIL = "Secret-Passw0rd-" + "0123456789abcdef"


def test_an_older_rows_unclear_url_with_a_digit_password_keeps_no_tail_on_disk_after_rekey(
    tmp_path: Path,
) -> None:
    """review U's first url (`alice:2024/<tail>@host`): RFC 3986 reads host `alice`, port 2024 and
    the tail as the path, so url_at_rest finds no password and keeps the url whole; `spool list`
    hides it (shown_url) yet the tail stays on disk after rekey, as it did for `p@ss/...` before U."""
    from tests.support.older_version import urls_after_rekey

    stored = urls_after_rekey(Scene(tmp_path), f"http://alice:2024/{PASSWORD_TAIL}@127.0.0.1:9/mcp")
    assert not [u for u in stored if PASSWORD_TAIL in u], stored


def test_an_older_rows_unclear_url_sends_no_password_tail_to_the_host_rfc_reads(tmp_path: Path) -> None:
    """The same url shape, delivered: Connection.open refuses an unclear url only when httpx cannot
    use it (unusable_url), so the agent connects to what RFC 3986 reads as the host (the user's
    name, with the password's digits as the port) and sends the password's tail as the path."""
    from tests.support.older_version import first_request_to

    # Meant as user `localhost`, password `<port>/<tail>`, server 127.0.0.1:9.
    sent = first_request_to(
        Scene(tmp_path), lambda port: f"http://localhost:{port}/{PASSWORD_TAIL}@127.0.0.1:9/mcp"
    )
    assert PASSWORD_TAIL not in sent, sent[:300]


# --- 3. a port followed by a non-ASCII space: httpx reads it, d306726 took it, eead980 erases it --

NBSP_SUFFIX = "\u00a0"  # (pasted from a web page or a document: a no-break space after the port)


def test_a_url_httpx_reads_with_a_no_break_space_after_its_port_is_still_accepted(tmp_path: Path) -> None:
    """eead980 strips only ' ' before checking the port's digits (port_not_a_number): a port
    followed by U+00A0 (int() and so httpx read `8678\\u00a0` as 8678; d306726's strip() did too)
    is now 'not a number': refused in settings with the password message, and a destination
    holding it is stored as `http://<reference>`: its url is gone."""
    from oneiric_session.config.loader import load_config
    from oneiric_session.mcp_compat import httpx
    from oneiric_session.tracking.destination import Destination

    url = f"http://127.0.0.1:8678{NBSP_SUFFIX}/mcp"
    assert httpx.URL(url).port == 8678 and httpx.URL(url).host == "127.0.0.1"
    env = {**Scene(tmp_path).env, "ONEIRIC_SESSION_TRANSPORT": "http", "ONEIRIC_SESSION_URL": url}
    assert load_config(environ=env).destination().url == url  # d306726: accepted
    destination = Destination(transport="http", url=url)
    assert Destination.from_json(destination.to_json()).url == url  # d306726: kept


def test_rows_spooled_for_a_port_with_a_no_break_space_are_still_delivered(tmp_path: Path) -> None:
    """Spooled by d306726 (which accepted the url and delivered to it), the row is refused by
    eead980's transport (`unusable_url`: 'its port is not a number') and its url erased at rekey."""
    from tests.support.delivery import wait_until
    from tests.support.http_server import HttpServer
    from tests.support.older_version import older_row

    (tmp_path / "server").mkdir()
    server = HttpServer(tmp_path / "server")
    url = server.url.replace("/mcp", f"{NBSP_SUFFIX}/mcp")
    scene = Scene(tmp_path)
    older_row(scene, url, "connection refused")
    server.start()
    agent = scene.start_agent()
    try:
        try:
            wait_until(lambda: len(server.rows()) == 1, what="the row's delivery", timeout=20)
        except AssertionError:
            with scene.spool() as spool:
                rows = spool.list_pending() + spool.list_dead()
            raise AssertionError(f"not delivered; {[(r.last_error, r.dead_reason) for r in rows]}") from None
    finally:
        agent.kill()
        agent.wait()
        scene.stop_agents()
        server.kill()


# --- 4. a row whose url this version keeps only as a reference is refused for a control character --


@pytest.mark.parametrize(
    "url",
    [f"http://alice:p@ss/{PASSWORD_TAIL}@127.0.0.1:9/mcp", "http://alice:pass/word@127.0.0.1:9/mcp"],
)
def test_a_row_stored_without_its_url_is_refused_for_what_it_is(url: str) -> None:
    """url_at_rest stores such a url as `http://` + SECRET_REFERENCE (a NUL in it); the transport's
    unusable_url checks control characters first, so the dead letter reads 'it holds a control
    character (a line break, a tab); remove it': nothing the user wrote, nothing they can remove."""
    import asyncio

    from oneiric_session.errors import RejectedError
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    stored = Destination.from_json(Destination(transport="http", url=url).to_json())

    async def attempt() -> BaseException:
        connection = Connection(stored)
        try:
            await connection.open()
        except Exception as exc:
            return exc
        finally:
            await connection.close()
        raise AssertionError("opened")

    exc = asyncio.run(attempt())
    assert isinstance(exc, RejectedError), repr(exc)
    assert "control character" not in str(exc), str(exc)


# --- 5. server text clipped before it is cleaned: a secret across the cut is left in part ---------

QUERY_SECRET = "Query-Secret-" + "0123456789abcdef" * 2


def test_who_url_cleans_an_unexpected_answer_before_clipping_it() -> None:
    """_read_page: `clean(texts[:200])`: a query secret (or a password) the answer repeats across
    character 200 is no longer found whole by Connection.scrub (which has no by-name cut), and its
    first part goes into the message `who --url` prints."""
    from oneiric_session.cli._who_query import RemoteError, _read_page
    from oneiric_session.mcp_compat import answer_view, tool_result
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.connection import Connection

    url = f"http://127.0.0.1:9/mcp?access_token={QUERY_SECRET}"
    connection = Connection(Destination(transport="http", url=url))
    said = "not a listing: " + "." * 120 + f" POST /mcp?access_token={QUERY_SECRET}"
    assert said.index(QUERY_SECRET) < 200 < said.index(QUERY_SECRET) + len(QUERY_SECRET)
    with pytest.raises(RemoteError) as caught:
        _read_page(answer_view(tool_result(said)), None, connection.scrub)
    assert QUERY_SECRET[:20] not in str(caught.value), str(caught.value)


def test_a_long_session_id_is_cleaned_before_it_is_clipped() -> None:
    """read_start_answer: `clean(session_id[:80])` likewise for a session id past 256 characters."""
    from oneiric_session.errors import RejectedError
    from oneiric_session.mcp_compat import answer_view, tool_result
    from oneiric_session.tracking.destination import Destination
    from oneiric_session.transport.answers import read_start_answer
    from oneiric_session.transport.connection import Connection

    secret = "Server-Env-Secret-" + "0123456789abcdef" * 2
    connection = Connection(Destination(command="sb", env=(("SESSION_BUDDY_SECRET", secret),)))
    session_id = "c-" + "x" * 60 + secret + "y" * 300
    answer = answer_view(tool_result("", structured={"status": "tracked", "session_id": session_id}))
    with pytest.raises(RejectedError) as caught:
        read_start_answer(answer, clean=connection.scrub)
    assert secret[:16] not in str(caught.value), str(caught.value)


# --- 6. the settings cache does not follow the code that now validates a url -------------------


def test_editing_the_url_rules_invalidates_cached_settings(tmp_path: Path) -> None:
    """loader.py validates a url with url_rules.url_problem (eead980: control characters, ports,
    IP literals), but tracking/url_rules.py is not among shell_view._CODE_FILES: in an editable
    install, a change to those rules leaves every cached view a hit, validated by the old rules."""
    import shutil
    import subprocess
    import sys

    import oneiric_session

    copy = tmp_path / "pkg"
    shutil.copytree(Path(oneiric_session.__file__).parent, copy / "oneiric_session")
    scene = Scene(tmp_path, transport="http", url="http://127.0.0.1:9/mcp")
    code = (
        "from oneiric_session.config.view_store import load_shell_view\n"
        "from oneiric_session.errors import ConfigError\n"
        "try:\n    print('view', load_shell_view().destination.url)\n"
        "except ConfigError as exc:\n    print('refused', exc)\n"
    )
    env = {**scene.env, "PYTHONPATH": str(copy)}

    def run() -> str:
        done = subprocess.run(  # (cwd: `-c` puts it first on sys.path, before PYTHONPATH)
            [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run().startswith("view")  # validated, then cached
    rules = copy / "oneiric_session" / "tracking" / "url_rules.py"
    rules.write_text(rules.read_text() + "\n\ndef url_problem(url):\n    return 'refused by the new rules'\n")
    assert run().startswith("refused"), "a cached view outlived the rules that validated it"
