"""Pytest plugin (entry point `pytest11`): swap the session tracker for `memory` or `noop` in tests."""
