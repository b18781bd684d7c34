"""Sentences of Chinese and English text, as character spans into it.

A sentence ends at 。！？；… (and the quotes or brackets closing them), at . ! ? before white
space, and at a line break, except where
- the `.` ends an abbreviation ("e.g.", "etc.", an initial) or numbers a list item ("1. "):
  decimals and versions ("3.9", "v1.2.3") have no space after their dots anyway;
- the line break only wraps a paragraph (both lines have words, the next starts no list item,
  heading or table row, the one before is no heading and does not end in a colon; a list item
  goes on only indented, after a comma, or between lower-case words, since ingest may have
  dropped the indentation).

Spans leave out surrounding white space, list markers and heading marks; `text[start:end]` is
the sentence exactly, whatever the script, emoji, combining marks or line ends.
"""

from __future__ import annotations

import re
from functools import lru_cache

_CLOSERS = "”’」』）》】)\\]\"'"
_BOUNDARY = re.compile(
    rf"\r\n|[\r\n\u2028\u2029]"
    rf"|[。！？；…]+[{_CLOSERS}]*"
    # Not at an ASCII ";": ingest writes a table row as "header: value; header: value", and
    # a row cut there loses the pairing of its cells (the row's other headers and values).
    rf"|[.!?]+[{_CLOSERS}]*(?=\s|$)"
)
_ABBREVIATIONS = frozenset(
    (
        *("e.g", "i.e", "eg", "ie", "etc", "vs", "cf", "al", "fig", "figs", "no", "nos"),
        *("approx", "incl", "resp", "esp", "ca", "viz", "mr", "mrs", "ms", "dr", "prof", "st"),
    )
)
_MARKER = re.compile(r"(?:[-*+•·>]+|#{1,6}|\d{1,3}[.)、]|[(（]\d{1,3}[)）])\s+")
"""A list marker, quote mark or Markdown heading at the start of a line: not part of a sentence."""
_WORD_CHAR = re.compile(r"[^\W_]")
_OPTION_START = re.compile(r"-{1,2}[A-Za-z][\w-]*(?:[ ,=]|$)")
"""A line that starts with a command-line option: the next entry of an option list."""


def _ends_sentence(text: str, start: int, match: re.Match[str]) -> bool:
    """Whether an ASCII `.` ending a word really ends a sentence (not "e.g." or "J. Smith")."""
    if match.group().rstrip(_CLOSERS) != ".":
        return True
    words = _line_before(text, match.start(), start).split()
    word = words[-1].lower().lstrip("([\"'") if words else ""
    if len(words) == 1 and word.isdigit():
        return False  # "1. " numbering a list item
    return word not in _ABBREVIATIONS and not (len(word) == 1 and word.isalpha())


_LINE_BREAKS = "\r\n\u2028\u2029"
_FIRST_LINE = re.compile(rf"[^{_LINE_BREAKS}]*")
_CONTINUED = re.compile(r"[,，、]$")
"""A line ending like this goes on (a list item wrapped where ingest lost its indentation)."""


def _line_before(text: str, end: int, floor: int = 0) -> str:
    """The text from the last line break before `end` (or `floor`) up to `end`."""
    start = max(text.rfind(c, floor, end) for c in _LINE_BREAKS) + 1
    return text[max(start, floor) : end]


_TABLE_ROW = re.compile(r"[^:;\n]{1,80}: [^;\n]*; [^:;\n]{1,80}: ")
"""A table row as ingest writes one: "header: value; header: value"."""


def is_table_row(line: str) -> bool:
    """Whether `line` is a table row: as ingest writes one, or a Markdown "| a | b |" row."""
    stripped = line.strip()
    return bool(_TABLE_ROW.match(stripped)) or stripped.startswith("|")


def _soft_wrap(text: str, match: re.Match[str]) -> bool:
    """Whether a line break only wraps a paragraph's text (it does not end a sentence): both
    lines have words, the next starts no list item, heading or table row, the line before is
    no heading or table row and does not end in a colon, and a list item goes on indented
    (or after a comma, or between lower-case words)."""
    after = _FIRST_LINE.match(text, match.end())
    previous = _line_before(text, match.start()).strip()
    following = after.group().strip() if after else ""
    if not _WORD_CHAR.search(previous) or not _WORD_CHAR.search(following):
        return False
    if previous.startswith(("#", "|")) or previous.endswith((":", "：")):
        return False
    if _TABLE_ROW.match(previous) or _TABLE_ROW.match(following):
        return False  # one row per line, as ingest writes tables
    indented = after is not None and after.group()[:1].isspace()
    mid_sentence = previous[-1:].islower() and following[:1].islower()
    if _MARKER.match(previous) and not (indented or mid_sentence or _CONTINUED.search(previous)):
        return False  # a list item goes on indented, or after a comma or mid-sentence
    if _OPTION_START.match(following):
        return False  # the next option of a command's help ("-n, --no-hmm  不使用…")
    return not (_MARKER.match(following + " ") or following.startswith(("#", "|")))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, in order, without surrounding white space,
    list markers or heading marks; pieces without a letter or digit are left out. A line
    break ends a sentence except inside a hard-wrapped paragraph."""
    return list(_split(text))


@lru_cache(maxsize=1024)
def _split(text: str) -> tuple[tuple[int, int], ...]:
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group()[0] in _LINE_BREAKS:
            if _soft_wrap(text, match):
                continue
        elif not _ends_sentence(text, start, match):
            continue
        _add(spans, text, start, match.end())
        start = match.end()
    _add(spans, text, start, len(text))
    return tuple(spans)


def _add(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.lstrip()
    start += len(piece) - len(stripped)
    marker = _MARKER.match(stripped)
    if marker and marker.end() < len(stripped.rstrip()):
        start += marker.end()
    end = start + len(text[start:end].rstrip())
    if end > start and _WORD_CHAR.search(text, start, end):
        spans.append((start, end))
