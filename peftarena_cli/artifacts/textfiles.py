"""Reading the user's text files (datasets, prompt sets, task files): UTF-8 only, JSON of bounded depth.

Every text file the commands read is UTF-8 (a UTF-8 byte-order mark is accepted and dropped). A file
in another encoding stops the command with one line that says so, naming UTF-16/UTF-32 when a
byte-order mark or the zero bytes of those encodings give it away, instead of a decoder's traceback.

JSON is parsed only after a cheap scan has bounded its nesting depth (:data:`MAX_JSON_DEPTH`): a
line such as ``[[[[...]]]]`` 100,000 levels deep would otherwise exhaust the parser's stack (the
C parsers behind some readers crash the process outright). Real records nest a few levels deep.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

from peftarena_cli.errors import InvalidArtifact

MAX_JSON_DEPTH = 100

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_UTF8_HINT = "save the file as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 IN > OUT`)"
# a JSON string literal (escapes included); replaced by spaces of the same length before the bracket
# scan, so that brackets inside strings do not count and offsets still map to lines
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def decode_utf8(raw: bytes, name: str, what: str = "file") -> str:
    """``raw`` decoded as UTF-8 (a leading byte-order mark dropped); InvalidArtifact when it is not."""
    for bom, enc in _BOMS:  # UTF-32 LE before UTF-16 LE: its mark starts with UTF-16 LE's
        if raw.startswith(bom):
            raise InvalidArtifact(f"{what} {name!r} is {enc} (it starts with a {enc} byte-order mark); "
                                  "it must be UTF-8", hint=_UTF8_HINT)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        head = raw[:64]
        # ASCII text in UTF-16 without a mark: every other byte is zero
        enc = "UTF-16" if head.count(0) * 3 >= len(head) else None
        line = raw.count(b"\n", 0, e.start) + 1
        what_it_is = f"looks like {enc}" if enc else f"byte {e.start} (line {line}) is not valid UTF-8"
        raise InvalidArtifact(f"{what} {name!r} is not UTF-8 ({what_it_is}); it must be UTF-8",
                              hint=_UTF8_HINT) from None
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL: UTF-16/32 without a mark does
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InvalidArtifact(f"{what} {name!r} is not UTF-8 text (NUL bytes from line {line}: looks like UTF-16 "
                              "or UTF-32 without a byte-order mark); it must be UTF-8", hint=_UTF8_HINT)
    return text


def read_utf8(path, what: str = "file") -> str:
    """The text of ``path``, which must be UTF-8 (see :func:`decode_utf8`)."""
    p = Path(path)
    return decode_utf8(p.read_bytes(), str(p), what)


def too_deep_at(text: str, limit: int = MAX_JSON_DEPTH) -> int | None:
    """Offset in ``text`` where JSON nesting first exceeds ``limit`` levels (None when it never does).

    Only brackets outside string literals count. A text with at most ``limit`` opening brackets in
    all cannot be deeper, so most texts are settled by two ``str.count`` calls."""
    if text.count("[") + text.count("{") <= limit:
        return None
    blanked = _JSON_STRING.sub(lambda m: " " * len(m.group()), text)
    depth = 0
    for m in _BRACKET.finditer(blanked):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return m.start()
        else:
            depth -= 1
    return None


def loads_bounded(text: str, name: str, what: str = "file", first_line: int = 1, limit: int = MAX_JSON_DEPTH):
    """``json.loads(text)`` after the depth scan. ``first_line`` is the line of ``text``'s first
    character in the file, for the message. A too-deep text raises InvalidArtifact; invalid JSON
    raises ``ValueError`` as ``json.loads`` does (callers word that error themselves)."""
    at = too_deep_at(text, limit)
    if at is not None:
        line = first_line + text.count("\n", 0, at)
        raise InvalidArtifact(f"{what} {name!r}, line {line}: nesting too deep (more than {limit} levels of "
                              "[ ] or { })", hint="records may nest at most "
                              f"{limit} levels; check that the line is the record you meant")
    try:
        return json.loads(text)
    except RecursionError:  # a limit above the interpreter's stack; the scan above makes this rare
        raise InvalidArtifact(f"{what} {name!r}: nesting too deep", hint="records must nest less deeply") from None
