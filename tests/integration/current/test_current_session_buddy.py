"""Our transport, `check` and spool replay against the real Session-Buddy 0.36.0 (Python 3.14).

The 0.23.0 tests of test_real_session_buddy_transport.py, unchanged: this directory's conftest
gives them `session_buddy_launcher` = the real 0.36.0 over stdio (the launch line of
config.loader.SESSION_BUDDY_STDIO_CODE, HOME in a scratch dir), and our side runs on the same
Python 3.14. 0.36.0 writes the same log line per tool call as 0.23.0 (shown on stderr by the
conftest's TRACKING_LOG), and keeps 0.23.0's auth defect (CONTRACT.md), so the same assertions
hold; only the first test's launch count and stdout noise differ (below).
"""

from __future__ import annotations

import logging
import re

import pytest

from tests.integration import test_real_session_buddy_transport as transport
from tests.integration.current.conftest import LAUNCHED

# Fixtures the re-used tests ask for, by name (module-scoped ones get their own instance here).
records = transport.records
check_runs = transport.check_runs
shared = transport.shared
scene = transport.scene

test_check_json_delivers_to_the_real_server = transport.test_check_json_delivers_to_the_real_server
test_check_explains_the_auth_defect = transport.test_check_explains_the_0_23_0_auth_defect
test_four_sessions_spooled_while_the_server_cannot_start_reach_the_real_server_once = (
    transport.test_four_sessions_spooled_while_the_server_cannot_start_reach_the_real_server_once
)
test_a_refused_event_is_permanent_and_sent_exactly_once = (
    transport.test_a_refused_event_is_permanent_and_sent_exactly_once
)
test_auth_on_no_token_and_the_valid_token_defect_are_permanent = (
    transport.test_auth_on_no_token_and_the_0_23_0_valid_token_defect_are_permanent
)


@pytest.mark.asyncio(loop_scope="module")
async def test_start_and_end_are_accepted_over_one_session_despite_the_stdout_noise(
    shared: transport.Shared,
) -> None:
    """0.23.0's test of that name, with 0.36.0's launch count and its own stdout noise (fewer lines)."""
    client, home = shared.client, shared.server.launch.home
    session_id = await client.start_session(transport.start_event("real-transport", home))
    assert re.fullmatch(r"real-transport-\d{8}-\d{6}", session_id)
    server_pid = client.server_pid
    assert await client.end_session(transport.end_event(session_id)) == "ended"
    assert client.connected and client.server_pid == server_pid  # the same session and process

    assert shared.server.starts("real-transport", "tracked") == [session_id]
    assert len(shared.server.ends(session_id)) == 1
    assert len(shared.server.lines(re.escape(LAUNCHED))) == 1  # one server launch
    skipped = [r for r in shared.records.records if r.getMessage().startswith("skipped non-JSON-RPC line")]
    assert skipped, "0.36.0 prints log lines on stdout between JSON-RPC messages"
    assert all(r.levelno == logging.DEBUG for r in skipped)
    loud = [f"{r.name}: {r.getMessage()}" for r in shared.records.records if r.levelno >= logging.WARNING]
    assert loud == []
