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
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field, field_validator

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


class UserInfo(BaseModel):
    username: str = Field(max_length=100)
    home: str = Field(max_length=500)

    @field_validator("username", "home")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class EnvironmentInfo(BaseModel):
    python_version: str = Field(max_length=MAX_NAME_CHARS)
    platform: str = Field(max_length=MAX_NAME_CHARS)
    cwd: str = Field(max_length=500)

    @field_validator("cwd")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class SessionStartEvent(BaseModel):
    event_version: str
    event_id: str
    event_type: str
    component_name: str = Field(max_length=MAX_NAME_CHARS)
    shell_type: str = Field(max_length=MAX_NAME_CHARS)
    timestamp: str
    pid: int = Field(ge=1, le=MAX_PID)
    user: UserInfo
    hostname: str = Field(max_length=MAX_NAME_CHARS)
    environment: EnvironmentInfo
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        # Like the real server: any UUID parses (version=4 only stamps the version bits).
        try:
            UUID(value, version=4)
        except ValueError as exc:
            raise ValueError(f"Invalid UUID v4 format: {value}") from exc
        return value

    @field_validator("event_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "1.0":
            raise ValueError(f"Unsupported event version: {value} (expected '1.0')")
        return value

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, value: str) -> str:
        if value != "session_start":
            raise ValueError(f"Invalid event_type for SessionStartEvent: {value}")
        return value

    @field_validator("component_name")
    @classmethod
    def _component(cls, value: str) -> str:
        if not re.match(COMPONENT_PATTERN, value):
            raise ValueError(f"Invalid component_name '{value}': must match pattern {COMPONENT_PATTERN}")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        return _check_timestamp(value)


class SessionEndEvent(BaseModel):
    event_type: str = "session_end"
    session_id: str
    timestamp: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, value: str) -> str:
        if value != "session_end":
            raise ValueError(f"Invalid event_type for SessionEndEvent: {value}")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        return _check_timestamp(value)
