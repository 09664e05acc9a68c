"""mcp_compat: the one boundary between our code and the MCP SDK's two majors (1.x >= 1.30, 2.x).

scripts/test runs this file (with the other MCP tests) on mcp 2.x in the project's venv and
on mcp 1.x in Oneiric 0.17.0's venv, where it sets ONEIRIC_SESSION_EXPECT_MCP_MAJOR=1.
"""

from __future__ import annotations

import json
import os

import pytest

from oneiric_session import mcp_compat


def test_the_sdk_major_in_use_is_the_one_this_run_expects() -> None:
    expected = os.environ.get("ONEIRIC_SESSION_EXPECT_MCP_MAJOR")
    if expected is None:
        pytest.skip("no expected major given (scripts/test gives it to every pass)")
    assert int(expected) == mcp_compat.MCP_MAJOR, mcp_compat.MCP_VERSION


def test_the_installed_sdk_is_not_older_than_the_tested_lowest() -> None:
    lowest = mcp_compat.TESTED_LOWEST[mcp_compat.MCP_MAJOR]
    as_tuple = lambda v: tuple(int(p) for p in v.split(".")[:3])  # noqa: E731
    assert as_tuple(mcp_compat.MCP_VERSION) >= as_tuple(lowest)


@pytest.mark.parametrize(
    ("structured", "is_error"), [({"status": "tracked", "session_id": "x"}, False), (None, True)]
)
def test_a_built_result_reads_back_the_same_on_either_major(
    structured: dict[str, str] | None, is_error: bool
) -> None:
    result = mcp_compat.tool_result("some text", structured=structured, is_error=is_error)
    view = mcp_compat.answer_view(result)
    assert (view.is_error, view.structured_content) == (is_error, structured)
    assert [(block.type, block.text) for block in view.content] == [("text", "some text")]


def test_a_message_line_parses_and_dumps_back() -> None:
    line = b'{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":false}}'
    message = mcp_compat.parse_message(line)
    assert json.loads(mcp_compat.dump_message(message)) == json.loads(line)
    with pytest.raises(ValueError):
        mcp_compat.parse_message(b"INFO not json at all")


def test_a_jsonrpc_error_answers_the_request_id() -> None:
    message = mcp_compat.jsonrpc_error(3, mcp_compat.types.METHOD_NOT_FOUND, "Method not found")
    dumped = json.loads(mcp_compat.dump_message(message))
    assert dumped == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "Method not found"}}


def test_a_server_error_carries_its_code_and_message() -> None:
    error = mcp_compat.server_error(mcp_compat.types.INTERNAL_ERROR, "session store unavailable: x")
    assert isinstance(error, mcp_compat.MCPError)
    assert (mcp_compat.error_code(error), mcp_compat.error_message(error)) == (
        -32603,
        "session store unavailable: x",
    )
