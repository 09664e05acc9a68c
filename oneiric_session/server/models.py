"""Event validation with the same rules and messages as Session-Buddy 0.23.0's event models.

The class names appear in the error text ("1 validation error for SessionStartEvent"), so they
match the real server's. Deliberate differences: `environment.cwd` is checked for shape only (the
server never looks at, enters or writes into the client's directory), and the names a session is
listed by are at most `MAX_NAME_CHARS` long (any loopback client can call us: one name of megabytes
would make every page of `who`/`last` holding it too large to answer), and so are timestamps, at
most `MAX_TIMESTAMP_CHARS`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field

from oneiric_session.tracking.limits import MAX_NAME_CHARS

COMPONENT_PATTERN = r"^[a-zA-Z0-9_-]+$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"
MAX_PID = 4194304
# `2026-02-06T12:34:56.123456789+05:30` is 35: a timestamp is listed, and dated by SQLite, too.
MAX_TIMESTAMP_CHARS = 40


def _check_timestamp(value: str) -> str:
    if len(value) > MAX_TIMESTAMP_CHARS:  # (the pattern allows any number of fraction digits)
        raise ValueError(
            f"Invalid ISO 8601 timestamp: {value[:MAX_TIMESTAMP_CHARS]}... (more than "
            f"{MAX_TIMESTAMP_CHARS} characters, expected format: 2026-02-06T12:34:56.789Z)"
        )
    if "T" not in value:
        raise ValueError(
            f"Invalid ISO 8601 timestamp: {value} (missing time component, "
            "expected format: 2026-02-06T12:34:56.789Z)"
        )
    if not re.match(TIMESTAMP_PATTERN, value):
        raise ValueError(f"Invalid ISO 8601 timestamp: {value} (expected format: 2026-02-06T12:34:56.789Z)")
    return value


def _strip(value: str) -> str:
    return value.strip()


def _uuid(value: str) -> str:
    # Like the real server: any UUID parses (version=4 only stamps the version bits).
    try:
        UUID(value, version=4)
    except ValueError as exc:
        raise ValueError(f"Invalid UUID v4 format: {value}") from exc
    return value


def _component(value: str) -> str:
    if not re.match(COMPONENT_PATTERN, value):
        raise ValueError(f"Invalid component_name '{value}': must match pattern {COMPONENT_PATTERN}")
    return value


def _exactly(expected: str, message: str) -> AfterValidator:
    """A string that must be `expected`; else `message`, its `{}` the value given."""

    def check(value: str) -> str:
        if value != expected:
            raise ValueError(message.format(value))
        return value

    return AfterValidator(check)


Stripped = AfterValidator(_strip)
Timestamp = Annotated[str, AfterValidator(_check_timestamp)]


class UserInfo(BaseModel):
    username: Annotated[str, Field(max_length=100), Stripped]
    home: Annotated[str, Field(max_length=500), Stripped]


class EnvironmentInfo(BaseModel):
    python_version: str = Field(max_length=MAX_NAME_CHARS)
    platform: str = Field(max_length=MAX_NAME_CHARS)
    cwd: Annotated[str, Field(max_length=500), Stripped]


class SessionStartEvent(BaseModel):
    event_version: Annotated[str, _exactly("1.0", "Unsupported event version: {} (expected '1.0')")]
    event_id: Annotated[str, AfterValidator(_uuid)]
    event_type: Annotated[str, _exactly("session_start", "Invalid event_type for SessionStartEvent: {}")]
    component_name: Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_component)]
    shell_type: str = Field(max_length=MAX_NAME_CHARS)
    timestamp: Timestamp
    pid: int = Field(ge=1, le=MAX_PID)
    user: UserInfo
    hostname: str = Field(max_length=MAX_NAME_CHARS)
    environment: EnvironmentInfo
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionEndEvent(BaseModel):
    event_type: Annotated[str, _exactly("session_end", "Invalid event_type for SessionEndEvent: {}")] = (
        "session_end"
    )
    session_id: str
    timestamp: Timestamp
    metadata: dict[str, Any] = Field(default_factory=dict)
