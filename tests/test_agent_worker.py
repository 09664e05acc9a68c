"""What an error means for a row (`classify`), the status a worker publishes, read back, and how
long the serve loop sleeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneiric_session.agent.clock import sleep_seconds
from oneiric_session.agent.status import (
    DestinationStatus,
    publish_destinations,
    read_destinations,
    status_path,
)
from oneiric_session.agent.worker import Outcome, classify
from oneiric_session.errors import (
    AuthenticationError,
    CircuitOpenError,
    DeliveryTimeoutError,
    RejectedError,
    ServerUnavailableError,
    SpoolError,
)
from oneiric_session.spool import Spool


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (AuthenticationError("invalid token"), Outcome.AUTH),
        (RejectedError("bad event"), Outcome.REFUSED),
        (ServerUnavailableError("connection refused"), Outcome.RETRY),
        (DeliveryTimeoutError("no answer"), Outcome.RETRY),
        (CircuitOpenError("open"), Outcome.RETRY),
        (KeyError("a bug below us"), Outcome.RETRY),  # backs off and is logged, never stops delivery
        (SpoolError("disk full"), Outcome.RETRY),  # (the worker re-raises these before classifying)
    ],
)
def test_classify(error: Exception, outcome: Outcome) -> None:
    assert classify(error) is outcome


def test_the_published_status_reads_back_typed(tmp_path: Path) -> None:
    failing = DestinationStatus(
        target="stdio: session-buddy",
        breaker="open",
        last_error="connection refused",
        failing_since=1.5,
        consecutive_failures=3,
    )
    with Spool(tmp_path / "spool.sqlite3") as spool:
        text = publish_destinations(spool.path, {"b": failing, "a": DestinationStatus(target="http")}, None)
        assert (
            publish_destinations(spool.path, {"b": failing, "a": DestinationStatus(target="http")}, text)
            == text
        )
        read = read_destinations(spool.path)
    assert read == {"a": DestinationStatus(target="http"), "b": failing}
    assert read["a"].answering and not read["b"].answering


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", json.dumps({"k": "a string", "j": [1]})],
)
def test_a_damaged_published_status_reads_as_nothing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spool.sqlite3"
    status_path(path).write_text(text)
    assert read_destinations(path) == {}


def test_wrong_types_in_a_published_status_are_ignored_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    status_path(path).write_text(
        json.dumps({"k": {"last_error": 7, "consecutive_failures": "3", "breaker": None, "target": "t"}})
    )
    assert read_destinations(path) == {"k": DestinationStatus(target="t")}


@pytest.mark.parametrize(
    ("moments", "expected"),
    [
        ([], 1.0),  # nothing ahead: the fallback poll
        ([None, None], 1.0),
        ([100.25, 103.0], 0.25),  # the earliest moment ahead
        ([99.0], 0.001),  # already past: look again at once (never a negative timeout)
        ([None, 100.5, None], 0.5),
    ],
)
def test_the_serve_loop_sleeps_until_the_earliest_moment_ahead(
    moments: list[float | None], expected: float
) -> None:
    assert sleep_seconds(moments, now=100.0, poll=1.0) == pytest.approx(expected)
