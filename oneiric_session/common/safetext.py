"""Text that is safe on one terminal or log line: the one sanitizer every printer and builder uses.

Standard library only (the shell imports it). Anything printed from a server, a client, the spool
or a settings file goes through `sanitize_text` (or `terminal_safe` for any object), so an escape
sequence, a carriage return, a NUL or a bidi override can never move the cursor or recolour a
terminal, and a huge value is cut to a stated length.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_TERMINAL_CHARS", "safe_lines", "sanitize_text", "terminal_safe"]

# Patterns are compiled on first use (re caches them): compiling all at import costs ~1 ms of the
# shell's start-up, and the usual text (printable, plain names) never needs them.
# ANSI escape sequences (CSI, OSC, and two-byte escapes), removed whole before single controls.
_ANSI = r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]"
# Line breaks and tabs become one space, so text stays readable on one log line.
_BREAKS = r"[\t\n\r\v\f\u0085\u2028\u2029]+"
# Other C0/C1 controls, DEL, and bidi marks and overrides (they can disguise a line) are dropped.
_CONTROLS = r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
# Any surrogate code point in a str cannot be encoded as UTF-8: replace it.
_SURROGATES = r"[\ud800-\udfff]"
# Extra characters kept before cleaning, so removed escapes do not shorten the text below its cap.
_CLEAN_MARGIN = 64
_ELLIPSIS = "…"
# What a printer shows of one value at most, unless it says otherwise.
DEFAULT_TERMINAL_CHARS = 500


def sanitize_text(value: str, max_chars: int) -> str:
    """One safe line: escapes and controls removed, surrogates replaced, at most `max_chars` characters."""
    text = value[: max_chars + _CLEAN_MARGIN]
    # Printable text holds no escape, break, control, bidi override nor surrogate: nothing to remove.
    if not text.isprintable():
        text = re.sub(_ANSI, "", text)
        text = re.sub(_BREAKS, " ", text)
        text = re.sub(_CONTROLS, "", text)
        text = re.sub(_SURROGATES, "\ufffd", text)
    if len(text) > max_chars or len(value) > max_chars + _CLEAN_MARGIN:
        text = text[: max(max_chars - 1, 0)] + _ELLIPSIS if max_chars > 0 else ""
    return text


def safe_lines(text: str, max_line_chars: int = 4 * DEFAULT_TERMINAL_CHARS) -> str:
    """Several lines (a log record with its traceback), each made one safe line; the breaks are kept."""
    return "\n".join(sanitize_text(line, max_line_chars) for line in text.split("\n"))


def terminal_safe(value: object, max_chars: int = DEFAULT_TERMINAL_CHARS) -> str:
    """`str(value)` made safe to print (None prints as an empty string); never raises."""
    if value is None:
        return ""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a hostile __str__: show its type, not its failure
        text = f"<unprintable {type(value).__name__}>"
    return sanitize_text(text, max_chars)
