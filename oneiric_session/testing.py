"""Pytest plugin (entry point `pytest11`): swap the session tracker for `memory` or `noop` in tests.

    def test_shell_reports_its_session(session_tracker):
        run_my_shell()                      # resolves its tracker as usual: gets `memory`
        assert session_tracker.ended_sessions()[0].component_name == "my-shell"

    @pytest.mark.parametrize("session_tracker", ["memory", "noop"], indirect=True)
    def test_shell_works_with_tracking_off(session_tracker): ...

The fixture selects the provider through $ONEIRIC_SESSION_PROVIDER (which beats
every settings file) and restores the environment afterwards. Loaded at every
pytest start, so it imports nothing beyond pytest until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from oneiric_session.tracking.tracker import Tracker

PROVIDERS = ("memory", "noop")


@pytest.fixture
def session_tracker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracker]:
    """A `memory` tracker (or `noop` with indirect parametrization) that sees every session recorded
    by trackers the code under test resolves during this test."""
    provider = getattr(request, "param", "memory")
    if provider not in PROVIDERS:
        raise pytest.UsageError(f"session_tracker: provider must be one of {PROVIDERS}, got {provider!r}")
    monkeypatch.setenv("ONEIRIC_SESSION_PROVIDER", provider)
    if provider == "noop":
        from oneiric_session.tracking.providers.noop import NoopTracker

        yield NoopTracker()
        return
    from oneiric_session.tracking.providers.memory import SHARED_LOG, MemoryTracker

    SHARED_LOG.clear()
    try:
        yield MemoryTracker(SHARED_LOG)
    finally:
        SHARED_LOG.clear()
