"""Review T: where a password could still hide in a url, an older version's undeliverable url,
and secrets cut out of nested or clipped urls; each test failed on 0d06f7f.

A url a password could hide in (an '@' after a host with a ':', or a port that is not a number)
is refused wherever it is given; an older version's row whose port is not a number is refused by
the transport before httpx sees it (no traceback naming the "port"), stored without its url, and
dead-lettered; a secret query value is cut out however deeply its url is encoded.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.delivery import Scene, wait_until
from tests.support.older_version import older_row

PASSWORD_TAIL = "Secret-Passw0rd-" + "0123456789abcdef"


def _files_holding(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rla", needle, str(root)], capture_output=True, text=True).stdout
    return sorted(found.split())


# 1. A password holding a raw '@' before its raw '/' (the commit says a password may hold a raw
# '@'), or whose part before the '/' is all digits: the "host" read is then 'ss' or 'alice' with a
# port that IS a number, so port_not_a_number lets it through and the rest of the password is
# shown as the path (status, check, who --url) and written to the outbox.
@pytest.mark.parametrize("password", [f"p@ss/{PASSWORD_TAIL}", f"2024/{PASSWORD_TAIL}"])
def test_a_password_with_a_raw_slash_is_never_shown(tmp_path: Path, password: str) -> None:
    url = f"http://alice:{password}@127.0.0.1:9/mcp"
    scene = Scene(tmp_path, transport="http", url=url)
    said = {
        " ".join(cmd): scene.run(*cmd, timeout=40) for cmd in (["status"], ["check"], ["who", "--url", url])
    }
    shown = {cmd: (r.stdout + r.stderr) for cmd, r in said.items() if PASSWORD_TAIL in r.stdout + r.stderr}
    assert not shown, {
        cmd: [ln for ln in text.splitlines() if PASSWORD_TAIL in ln] for cmd, text in shown.items()
    }


def test_a_password_with_a_raw_at_and_slash_is_not_written_to_disk(tmp_path: Path) -> None:
    """A shell with such a url: the settings are refused (tracking off, said once), and nothing
    it would have written holds the password."""
    url = f"http://alice:p@ss/{PASSWORD_TAIL}@127.0.0.1:9/mcp"
    scene = Scene(tmp_path, transport="http", url=url)
    shell = scene.shell(1)
    _, err = shell.communicate(timeout=60)
    scene.stop_agents()
    assert "an '@' after its host" in err, err[-500:]
    assert not _files_holding(tmp_path, PASSWORD_TAIL), _files_holding(tmp_path, PASSWORD_TAIL)


# 2. An older version's row whose url's port is not a number (a raw '/' in its password): describe()
# hides it, but the agent hands the url to httpx at every attempt and logs the InvalidURL traceback
# ("Invalid port: 'Abc9'": the password's first part), and the spool's destination, "brought up to
# date", still holds the whole password.
OLDER = f"http://alice:Abc9/{PASSWORD_TAIL}@127.0.0.1:9/mcp"


def _tried_once(scene: Scene) -> None:
    agent = scene.start_agent()
    try:

        def tried() -> bool:
            with scene.spool() as spool:
                rows = spool.list_pending()
            return not rows or rows[0].last_error != "connection refused"

        wait_until(tried, what="a delivery attempt", timeout=30)
    finally:
        agent.kill()
        agent.wait()
        scene.stop_agents()


def test_an_older_rows_port_not_a_number_url_is_not_logged(tmp_path: Path) -> None:
    from oneiric_session.wakeup import agent_log_path

    scene = Scene(tmp_path)
    older_row(scene, OLDER, "connection refused")
    _tried_once(scene)
    log = agent_log_path(scene.spool_path).read_text()
    assert "Abc9" not in log, [line for line in log.splitlines() if "Abc9" in line]
    assert "Traceback" not in log, log[:400]


def test_an_older_rows_port_not_a_number_url_password_is_not_kept_on_disk(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    older_row(scene, OLDER, "connection refused")
    _tried_once(scene)  # the agent brings the older version's destinations up to date
    with scene.spool() as spool, spool.transaction() as conn:
        stored = [json.loads(text)["url"] for (text,) in conn.execute("SELECT json FROM destinations")]
    assert not [url for url in stored if PASSWORD_TAIL in url], stored


# 4. The by-name cut now stops at ',', ';', ')', '>' and ']': a secret value holding one (httpx
# sends them as they are) and clipped by an older version shows everything after it.
def test_a_clipped_secret_holding_a_comma_is_cut_out_whole() -> None:
    from oneiric_session.common.scrub import without_secrets

    secret = "part1,Review-T-Second-Half-" + "0123456789" * 3
    clipped = f"rejected: GET /mcp?access_token={secret[:40]}…"
    said = without_secrets(clipped, [secret], [("access_token", secret)])
    assert "Review-T-Second" not in said, said


# 5. A url httpx reads (host, port 9) and an earlier version took: a trailing space after the port
# (an environment variable, a JSON string) is refused as "its port is not a number ... password".
def test_a_trailing_space_after_the_port_is_not_taken_for_a_password() -> None:
    from oneiric_session.mcp_compat import httpx
    from oneiric_session.tracking.destination_secrets import port_not_a_number

    url = "http://127.0.0.1:9 "
    assert httpx.URL(url).port == 9
    assert not port_not_a_number(url)
