"""Terminal safety: the one sanitizer every printing command uses."""

from __future__ import annotations

import pytest

from oneiric_session.common.safetext import sanitize_text, terminal_safe

HOSTILE = [
    "\x1b[31mred\x1b[0m",  # SGR colour
    "\x1b]0;title\x07",  # OSC window title
    "\x9b2J",  # C1 CSI: clear screen
    "a\rb",  # carriage return
    "nul\x00byte",
    "bell\x07back\x08",
    "bidi\u202eevil\u202c",
    "isolate\u2066x\u2069",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_no_control_or_bidi_character_survives(text: str) -> None:
    """Whatever goes in, what comes out has no C0/C1 control, no escape and no bidi override."""
    out = terminal_safe(text)
    assert out.isprintable(), repr(out)
    assert "\x1b" not in out and "\x9b" not in out


def test_the_visible_text_is_kept() -> None:
    """Only the escapes go: the words a person would read stay."""
    assert terminal_safe("\x1b[31mred\x1b[0m") == "red"
    assert terminal_safe("a\rb") == "a b"


def test_long_values_are_cut_with_an_ellipsis() -> None:
    assert terminal_safe("x" * 1_000_000, 10) == "x" * 9 + "…"
    assert sanitize_text("x" * 11, 10).endswith("…")


def test_none_and_hostile_str() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert terminal_safe(None) == ""
    assert terminal_safe(Bad()) == "<unprintable Bad>"
    assert terminal_safe(12) == "12"
