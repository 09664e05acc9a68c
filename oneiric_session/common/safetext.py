"""Text that is safe on one terminal or log line: the one sanitizer every printer and builder uses.

Standard library only (the shell imports it). Anything printed from a server, a client, the spool
or a settings file goes through `sanitize_text` (or `terminal_safe` for any object), so an escape
sequence, a carriage return, a NUL or a bidi override can never move the cursor or recolour a
terminal, and a huge value is cut to a stated length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFAULT_TERMINAL_CHARS",
    "cut_spans",
    "safe_lines",
    "sanitize_text",
    "secret_forms",
    "secret_spans",
    "terminal_safe",
    "without_secrets",
]

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


# A secret shorter than this is cut out only where it stands as a word of its own: "1" under
# REQUIRE_AUTH, cut out of "8181", would mangle a message and show itself by where it was cut.
WORD_ONLY_BELOW = 6
# What httpx leaves as it is in a url's query as it sends it (it percent-encodes the rest).
_SENT_AS_IS = "!$&'()*+,;=:@/?~"


def secret_forms(values: Iterable[str]) -> set[str]:
    """Each of `values` in every form a url may carry it and a server repeat it: as written,
    percent-decoded (`%2B` is `+`), and percent-encoded as httpx sends it (non-ASCII)."""
    from urllib.parse import quote, unquote, unquote_plus  # (never on a shell's path)

    forms: set[str] = set()
    for value in values:
        if value:
            forms.update(
                (value, unquote(value), unquote_plus(value), quote(unquote(value), safe=_SENT_AS_IS))
            )
    return forms


def secret_spans(text: str, values: Iterable[str], label: str) -> list[tuple[int, int, str]]:
    """Where each value stands in `text` (a short one only as a word of its own)."""
    found = []
    for value in values:
        if not value:
            continue
        if len(value) < WORD_ONLY_BELOW:
            pattern = rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])"
            found += [(m.start(), m.end(), label) for m in re.finditer(pattern, text)]
            continue
        start = text.find(value)
        while start >= 0:
            found.append((start, start + len(value), label))
            start = text.find(value, start + 1)
    return found


def cut_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with every span replaced by its label, overlapping spans merged into one (a secret
    overlapping another is never left in part; "[token]" wins over another label)."""
    pieces, done = [], 0
    merged: list[list[Any]] = []
    for start, end, label in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] = "[token]" if "[token]" in (label, merged[-1][2]) else label
        else:
            merged.append([start, end, label])
    for start, end, label in merged:
        pieces += [text[done:start], label]
        done = end
    return "".join([*pieces, text[done:]])


def without_secrets(text: str | None, secrets: Iterable[str], query_names: Iterable[str] = ()) -> str | None:
    """`text` with each of `secrets` (in each of its `secret_forms`) cut out ("[secret]"), and the
    value of each query parameter named in `query_names`: whole where a form of a secret starts it,
    else up to the next separator (an older version's message may have cut the value short, where
    the whole secret is no longer found). A separator may be percent-encoded, and again (a url in a
    url in a url)."""
    if not text:
        return text
    forms = secret_forms(secrets)
    spans = secret_spans(text, forms, "[secret]")
    for name in query_names:
        pattern = rf"(?:[?&]|%(?:25)*3[Ff]|%(?:25)*26){re.escape(name)}(?:=|%(?:25)*3[Dd])([^&#\s'\"]+)"
        for match in re.finditer(pattern, text):
            start, value = match.start(1), match.group(1)
            whole = max((len(form) for form in forms if value.startswith(form)), default=len(value))
            spans.append((start, start + whole, "[secret]"))
    return cut_spans(text, spans)
