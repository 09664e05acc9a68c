"""Secrets cut out of text: a token or secret a server repeats, an older version's message naming a
url whole (standard library only). Used by the transport and the agent's spool, and by `spool
list`; never on a shell's path, so a shell does not load it.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "as_shown",
    "cut_spans",
    "holds_piece",
    "redacted_traceback",
    "secret_forms",
    "secret_spans",
    "withheld",
    "without_secrets",
]

# A secret shorter than this is cut out only where it stands as a word of its own: "1" under
# REQUIRE_AUTH, cut out of "8181", would mangle a message and show itself by where it was cut.
WORD_ONLY_BELOW = 6
# What httpx leaves as it is in a url's query as it sends it (it percent-encodes the rest), and
# what JavaScript's encodeURIComponent does (a Node server's DSN): each encoder's own form.
_SENT_AS_IS = "!$&'()*+,;=:@/?~"
_URI_COMPONENT = "!'()*"
# Characters a terminal or a log viewer shows as nothing (format characters `sanitize_text` keeps:
# a joiner is part of an emoji): a secret they split reads whole, so they are taken out first.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200d\u2060-\u2064\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What stands for a text that still holds a secret in a form no list of forms foresees.
WITHHELD = "[text withheld: it repeats a secret]"
# A backslash escape of JSON or Python: \uXXXX (any case), \xXX, or one character (\", \\, \/, ...).
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
# A run of characters no quoting, escaping or percent-encoding changes: a secret's run this long
# found whole in a text is the secret's, whatever was done to the rest of it.
_PLAIN_RUN = re.compile(r"[A-Za-z0-9._~-]{8,}")
# And this many characters in a row of a longer run, wherever a text cut it (pydantic shows a long
# value as its first 24 characters, "...", its last 24). Not fewer: a secret-named value that is no
# secret (GIT_AUTHOR_NAME=mahavishnu-admin, a keyring's module path) shares shorter words with
# the messages of a server (its component's name, a package's), and they would all be withheld.
_PIECE_CHARS = 12
# What reads as a password's (`_reads_as_password`): a symbol words, paths and urls do not have.
_SYMBOL = re.compile(r"[^A-Za-z0-9\-._~/: ]")
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[A-Za-z]")
# A value that is a path (absolute, home-relative or a Windows drive's, of path characters only:
# letters of any script, a user's home may be /home/josé; not `+` nor `=`, a base64 key's).
_PATH = re.compile(r"(?:[/~]|[A-Za-z]:[\\/])[\w.~/\\:@ -]*")
# How much of a secret its pieces are taken of (a megabyte one would take seconds and 200 MB).
_PIECE_SOURCE_CHARS = 16384
# What a logged traceback shows at most: Python's own limits for exception groups (nested, and
# side by side), and of a chain of errors raised from or while handling others, its ends.
_GROUP_DEPTH = 10
_GROUP_WIDTH = 15
_CHAIN_ENDS = 16  # the first errors of a chain, and its last


def as_shown(text: str) -> str:
    """`text` as a terminal shows it, for looking for secrets in it: one line, escapes and
    controls taken out (`sanitize_text`), and the characters shown as nothing (`_INVISIBLE`)."""
    from oneiric_session.common.safetext import sanitize_text

    return _INVISIBLE.sub("", sanitize_text(text, len(text)))


def secret_forms(values: Iterable[str]) -> set[str]:
    """Each of `values` in every form a url may carry it and a server repeat it: as written,
    percent-decoded (`%2B` is `+`), percent-encoded as httpx sends it (non-ASCII), as a form
    encodes it (`urlencode`: `+`, `/`, `=` too) and as JavaScript does (`encodeURIComponent`); and
    each of those as a JSON string or a Python repr holds it (an answer quoted whole escapes `"`,
    `\\` and non-ASCII letters). A value that is not UTF-8 (an environment's byte, a surrogate
    here) is also taken as a text shows it, the byte replaced."""
    import json  # (never on a shell's path)
    from urllib.parse import quote_plus, unquote, unquote_plus

    forms: set[str] = set()
    for value in _readable(values):
        plain = unquote(value)
        forms.update(
            (
                value,
                plain,
                unquote_plus(value),
                *(_encoded(plain, safe) for safe in (_SENT_AS_IS, _URI_COMPONENT)),
                quote_plus(_utf8(plain)),
            )
        )
    for form in list(forms):
        forms.update((json.dumps(form)[1:-1], json.dumps(form, ensure_ascii=False)[1:-1], repr(form)[1:-1]))
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


def _readable(values: Iterable[str]) -> list[str]:
    """The values given (none empty), and each one that is not UTF-8 as a text shows it."""
    found = [value for value in values if value]
    return found + [_SURROGATE.sub("\ufffd", value) for value in found if _SURROGATE.search(value)]


def _utf8(text: str) -> bytes:
    """`text` as bytes, a byte an environment gave that is not UTF-8 as that byte (never raises)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _encoded(text: str, safe: str) -> str:
    from urllib.parse import quote  # (never on a shell's path)

    return quote(_utf8(text), safe=safe)


def withheld(text: str, values: Iterable[str]) -> str:
    """`text`, or WITHHELD when one of `values` is still in it in a form `secret_forms` does not
    list: a run of 8 or more of its characters that no quoting, escaping or encoding changes (its
    letters, digits and `._~-`) stands in the text, or _PIECE_CHARS of its characters in a row
    that read as a password's (the text cut it short, or in the middle), or it shows once the
    text's backslash escapes are undone (JSON's or Python's, a string quoted in a string quoted
    again). Called after the forms found were cut, so what is left of a secret is what no form
    foresaw."""
    found = _plain_forms(values)
    if _holds_piece(text, found, _PIECE_CHARS, 8):
        return WITHHELD
    if "\\" not in text:
        return text
    plain = text
    for _ in range(4):  # each round undoes one level of quoting (one too many would eat a `\`)
        undone = _ESCAPE.sub(_unescape, plain)
        if undone == plain:
            break
        plain = undone
        if any(form in plain for form in found) or _holds_piece(plain, found, _PIECE_CHARS, 8):
            return WITHHELD
    return text


def holds_piece(text: str, values: Iterable[str], *, size: int = _PIECE_CHARS, least: int = 8) -> bool:
    """Whether a piece of one of `values` stands in `text`: a run of `least` or more of its plain
    characters (`_PLAIN_RUN`) whole, or `size` of its characters in a row that read as a
    password's (`_pieces`)."""
    return _holds_piece(text, _plain_forms(values), size, least)


def _holds_piece(text: str, forms: frozenset[str], size: int, least: int) -> bool:
    # Each `size` characters of the text looked up once (not each piece searched for in all of
    # it: a token alone has hundreds of pieces).
    windows, runs = _pieces(forms, size, least)
    if any(run in text for run in runs):
        return True
    return bool(windows) and any(text[at : at + size] in windows for at in range(len(text) - size + 1))


def _plain_forms(values: Iterable[str]) -> frozenset[str]:
    """Each value as given and percent-decoded, but a short one (WORD_ONLY_BELOW)."""
    from urllib.parse import unquote  # (never on a shell's path)

    forms = {form for value in _readable(values) for form in (value, unquote(value))}
    return frozenset(form for form in forms if len(form) >= WORD_ONLY_BELOW)


@functools.lru_cache(maxsize=64)  # (the same destination's secrets, text after text)
def _pieces(forms: frozenset[str], size: int, least: int) -> tuple[frozenset[str], tuple[str, ...]]:
    """The pieces of `forms` a text may show (of each form's first _PIECE_SOURCE_CHARS characters):
    `size` characters in a row, and plain runs of `least` or more characters whole.

    - A password or a token (it reads as one: a digit and a letter, or a symbol; no space; not a
      path): every `size` characters in a row of it as it is, percent-encoded (a url or a DSN
      built of it) and of its plain runs.
    - A url: the same of its password (as written and percent-decoded); of the rest, as of a path.
    - A name (no digit or no letter, no symbol, no space), a phrase (a space) or a path: only the
      `size` characters in a row that read as a password's: not 'oneiric-sess' of a bot's name,
      'openid profile' of an OAuth scope list (nor a passphrase of words, the price),
      '/run/user/1000' or 'session-buddy' of a path, which many a message holds."""
    from urllib.parse import quote_plus, unquote, urlsplit  # (never on a shell's path)

    windows: set[str] = set()
    whole: set[str] = set()
    for form in forms:
        head = form[:_PIECE_SOURCE_CHARS]
        located = "://" in head or bool(_PATH.fullmatch(head))
        passwords: set[str] = set()
        if "://" in head:
            with contextlib.suppress(ValueError):
                password = urlsplit(head).password
                passwords = {password, unquote(password)} if password else set()
        elif not located and not any(char.isspace() for char in head) and _reads_as_password(head):
            passwords = {head}
        for password in passwords:
            whole |= {run for run in _PLAIN_RUN.findall(password) if len(run) >= least}
            sources = {password, quote_plus(_utf8(password))}
            sources |= {_encoded(password, safe) for safe in ("", _URI_COMPONENT)}
            for source in sources:
                windows |= {source[at : at + size] for at in range(len(source) - size + 1)}
        runs = {run for run in _PLAIN_RUN.findall(head) if len(run) >= least}
        if located:  # (a path's directories, a url's hosts: many a message's, '/run/user/1000')
            runs = {run for run in runs if _reads_as_password(run)}
        whole |= runs
        for source in runs if located else {head, *runs}:
            windows |= {
                piece
                for piece in (source[at : at + size] for at in range(len(source) - size + 1))
                if _reads_as_password(piece)
            }
    return frozenset(windows), tuple(sorted(whole))


def _reads_as_password(text: str) -> bool:
    """A digit and a letter, or a symbol words, paths and urls do not have (linear: no regex
    lookahead over a long run)."""
    return bool(_SYMBOL.search(text)) or bool(_DIGIT.search(text) and _LETTER.search(text))


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:  # \uXXXX or \xXX
        return chr(int(code[1:], 16))
    return _ESCAPED.get(code, code)


def without_secrets(
    text: str | None, secrets: Iterable[str], query: Iterable[tuple[str, str]] = ()
) -> str | None:
    """`text` with each of `secrets` (in each of its `secret_forms`) cut out ("[secret]"), and the
    value of each query parameter of `query` ((name, secret value) pairs) cut by its name: whole
    where a form of that parameter's own secret starts it, else up to the next separator (an older
    version's message may have cut the value short, where the whole secret is no longer found; a
    shorter secret of another parameter starting it is no sign of where it ends). A separator may
    be percent-encoded, and again (a url in a url in a url)."""
    if not text:
        return text
    secrets = tuple(secrets)
    spans = secret_spans(text, secret_forms(secrets), "[secret]")
    by_name: dict[str, set[str]] = {}
    for name, value in query:
        by_name.setdefault(name, set()).update(secret_forms([value]))
    for name, own in by_name.items():
        pattern = rf"(?:[?&]|%(?:25)*3[Ff]|%(?:25)*26){re.escape(name)}(?:=|%(?:25)*3[Dd])([^&#\s'\"]+)"
        for match in re.finditer(pattern, text):
            start, value = match.start(1), match.group(1)
            whole = max((len(form) for form in own if value.startswith(form)), default=len(value))
            spans.append((start, start + whole, "[secret]"))
    return withheld(cut_spans(text, spans), secrets)


def redacted_traceback(exc: BaseException, message: Callable[[BaseException], str]) -> str:
    """A traceback of `exc`, of the exceptions it was raised from or while handling and of those
    an exception group holds (as deep and as many as Python's own traceback shows), for a log: each
    one's frames (files, lines and source, never a value) and its type, with its message as
    `message(exc)` gives it (scrubbed, or not shown): the message of a foreign error may repeat a
    url, a token or a server.env value it was given."""
    import textwrap
    import traceback  # (never on a shell's path)

    seen: set[int] = set()

    def one(each: BaseException, depth: int) -> str:
        try:
            said = message(each)
        except Exception:  # a hostile or broken __str__
            said = "(its message cannot be read)"
        frames = "".join(traceback.format_tb(each.__traceback__))
        text = f"Traceback (most recent call last):\n{frames}{type(each).__qualname__}: {said}"
        if not isinstance(each, BaseExceptionGroup):
            return text
        held = [sub for sub in each.exceptions if id(sub) not in seen]
        if depth >= _GROUP_DEPTH:
            return text + f"\n+-- ({len(held)} exception(s), nested deeper, not shown)"
        for number, sub in enumerate(held[:_GROUP_WIDTH], 1):
            text += f"\n+-- {number} of {len(held)}:\n" + textwrap.indent(chained(sub, depth + 1), "|   ")
        if len(held) > _GROUP_WIDTH:
            text += f"\n+-- and {len(held) - _GROUP_WIDTH} more, not shown"
        return text

    def chained(top: BaseException, depth: int) -> str:
        chain: list[BaseException] = []
        current: BaseException | None = top
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            chain.append(current)
            current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        chain.reverse()  # the first error first: where it began
        parts = [one(each, depth) for each in chain[:_CHAIN_ENDS]]
        if len(chain) > 2 * _CHAIN_ENDS:
            parts.append(f"({len(chain) - 2 * _CHAIN_ENDS} more, not shown)")
        parts += [one(each, depth) for each in chain[max(_CHAIN_ENDS, len(chain) - _CHAIN_ENDS) :]]
        return "\n\nwhich led to\n\n".join(parts)

    return chained(exc, 0)
