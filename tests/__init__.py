"""The test suite, a package: every test imports its helpers as `tests.support.*` (one import root),
so it collects the same from an editable or a non-editable install."""
