"""CONTRACT.md section 1, checked against the real Session-Buddy 0.36.0 (Python 3.14).

The 0.23.0 tests of test_real_session_buddy_contract.py, unchanged, with this directory's
`session_buddy_launcher` (the real 0.36.0): the wire contract held from 0.23.0 to 0.36.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.integration import test_real_session_buddy_contract as contract

pytestmark = pytest.mark.asyncio(loop_scope="module")

server = contract.server

test_start_tools_reject_unknown_arguments = contract.test_start_tools_reject_unknown_arguments
test_start_then_end = contract.test_start_then_end
test_unknown_session_id_still_answers_ended = contract.test_unknown_session_id_still_answers_ended
test_two_starts_in_one_second_share_an_id = contract.test_two_starts_in_one_second_share_an_id
test_refused_event_is_status_error_every_time = contract.test_refused_event_is_status_error_every_time
test_bad_component_name_is_status_error = contract.test_bad_component_name_is_status_error
test_argument_errors_are_is_error_validation_text = contract.test_argument_errors_are_is_error_validation_text
test_auth_on_failure_forms = contract.test_auth_on_failure_forms


async def test_auto_mode_speaks_the_2026_07_protocol(server: tuple[Client, Path]) -> None:
    """0.23.0 fell back to the 2025-11-25 initialize handshake; 0.36.0 (mcp 2.3.0) speaks 2026-07-28."""
    client, _ = server
    assert client.server_info is not None
    assert (client.server_info.name, client.server_info.version) == ("session-buddy", "0.36.0")
    assert client.protocol_version == "2026-07-28"
