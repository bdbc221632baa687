"""Entry names as valid Unicode, whatever bytes the archiver wrote.

Zips from older systems carry CP437, CP1252 or Shift-JIS names without the UTF-8 flag (or with
the flag on bytes that are not UTF-8); tars carry whatever bytes the writer's locale used,
which Python's tarfile turns into lone surrogates (``\\udcXX``, "surrogateescape"). A lone
surrogate cannot be encoded as UTF-8 and makes Redis's cjson reject the JSON it is in, so
every name an archive entry carries goes through ``clean_text`` or ``readable_name``.

``readable_name`` picks among legacy encodings by a small plausibility score, computed over
the non-ASCII characters of each candidate decoding (ASCII decodes the same in all of them):

=========================================================  ==============================
Latin letter (Lu/Ll/Lt named LATIN) next to an ASCII letter  +2
Latin letter with no ASCII letter beside it                  +1
CJK ideograph, hiragana, katakana (letters)                  +2 (+1 between two ASCII letters)
half-width katakana letter                                   +1
other letters (Greek, Cyrillic, modifiers), marks, numbers, 0
spaces, punctuation
symbols (S*)                                                 -1
box drawing, block elements, shades                          -2
control, format, private use, unassigned                     -3
=========================================================  ==============================

The highest score wins; ties go to the first encoding in the order given. Why those weights:
CP437 maps most Shift-JIS lead bytes to accented capitals, so a Japanese name read as CP437
is a run of accented letters with no ASCII letter beside them (+1 each, against +2 for each
two-byte character read as CP932); a CP1252 name read as CP437 turns its letters into box
drawing, Greek or superscripts, and a CP437 name read as CP1252 into currency signs and
daggers. Two cases stay ambiguous by construction and fall to the order (zip: CP437 first, as
the zip specification says): a name whose only non-ASCII bytes are isolated and decode to
Latin letters in two encodings, and typographic punctuation of CP1252 (en dash, quotes),
which CP437 reads as letters.
"""

from __future__ import annotations

import re
import unicodedata

ZIP_LEGACY = ("cp437", "cp1252", "cp932")  # zip's historical default first, as APPNOTE says
TAR_LEGACY = ("cp1252", "cp932")  # POSIX locales of old: Latin-1/Windows-1252, Shift-JIS
_LAST_RESORT = "latin-1"  # decodes any byte string

_SURROGATE = re.compile("[\ud800-\udfff]")
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_ESCAPED_RUN = re.compile("[\udc80-\udcff]+")  # bytes 0x80..0xFF kept by surrogateescape
_NOT_ESCAPED = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_BOX = ("BOX DRAWINGS", "BLOCK", "LIGHT SHADE", "MEDIUM SHADE", "DARK SHADE")
_CJK = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA")


def clean_text(text: str) -> str:
    """``text`` as valid Unicode without surrogates; unchanged when it has none (idempotent).

    Surrogate-escaped bytes (U+DC80..U+DCFF) become bytes again, one path component at a
    time (a folder and a file may come from different locales; ``/`` is never part of a
    multi-byte character in UTF-8 or Shift-JIS). tarfile decoded the component's valid UTF-8
    runs already, and those may be pieces of a legacy name (Shift-JIS bytes often form valid
    two-byte UTF-8), so two readings compete by ``plausibility``: the component's bytes
    through ``readable_name``, and each escaped run alone beside the decoded rest; ties go to
    the former. A component that also holds characters from U+0800 up (which accidental
    UTF-8 in legacy bytes hardly ever makes) keeps them and has only its runs decoded. A
    surrogate pair becomes the character it encodes; any other lone surrogate becomes U+FFFD.
    """
    if not _SURROGATE.search(text):
        return text
    text = _NOT_ESCAPED.sub("\ufffd", _PAIR.sub(_combined, text))
    return "/".join(_clean_component(part) for part in text.split("/"))


def _clean_component(part: str) -> str:
    if not _ESCAPED_RUN.search(part):
        return part
    runs = _ESCAPED_RUN.sub(
        lambda run: readable_name(run.group().encode("utf-8", "surrogateescape"), TAR_LEGACY),
        part)
    if any(ord(char) >= 0x800 for char in _ESCAPED_RUN.sub("", part)):
        return runs  # real UTF-8 text (or U+FFFD) beside the bytes: legacy bytes make 2-byte
    whole = readable_name(part.encode("utf-8", "surrogateescape"), TAR_LEGACY)
    return runs if plausibility(runs) > plausibility(whole) else whole


def escaped_bytes(text: str) -> bytes | None:
    """The bytes a surrogate-escaped name was made of, or None if it holds no escaped bytes."""
    if not _ESCAPED_RUN.search(text):
        return None
    text = _NOT_ESCAPED.sub("\ufffd", _PAIR.sub(_combined, text))
    return text.encode("utf-8", "surrogateescape")


def readable_name(raw: bytes, legacy: tuple[str, ...] = ZIP_LEGACY) -> str:
    """``raw`` as UTF-8 if it is valid UTF-8, else the most plausible legacy decoding.

    Never fails: Latin-1 is always the last candidate and decodes any byte string.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best, best_score = "", None
    for encoding in (*legacy, _LAST_RESORT):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        score = plausibility(text)
        if best_score is None or score > best_score:
            best, best_score = text, score
    return best


def plausibility(text: str) -> int:
    """How much ``text`` looks like a real name (the table in the module docstring)."""
    score = 0
    for i, char in enumerate(text):
        if char.isascii():
            continue
        before = text[i - 1] if i else ""
        after = text[i + 1] if i + 1 < len(text) else ""
        score += _char_score(char, _ascii_letter(before), _ascii_letter(after))
    return score


def _char_score(char: str, letter_before: bool, letter_after: bool) -> int:
    category = unicodedata.category(char)
    name = unicodedata.name(char, "")
    if category[0] == "L":
        if "LATIN" in name and category in ("Lu", "Ll", "Lt"):
            return 2 if letter_before or letter_after else 1
        if name.startswith("HALFWIDTH KATAKANA"):
            return 1
        if name.startswith(_CJK):
            return 1 if letter_before and letter_after else 2
        return 0
    if category[0] in "MNPZ":
        return 0
    if category[0] == "S":
        return -2 if name.startswith(_BOX) else -1
    return -3  # Cc, Cf, Co, Cn, Cs


def _ascii_letter(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _combined(pair: re.Match[str]) -> str:
    high, low = (ord(c) for c in pair.group())
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
