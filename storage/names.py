"""Knowledge-base names: they become directory names, so they are checked before any path use.

A name is compared in its canonical form: NFKC (full-width `ＡＢ` is `AB`, the ligature `ﬁ` is
`fi`, a decomposed `é` is composed), then every decimal digit written as its ASCII digit.
NFKC leaves Arabic-Indic, Devanagari and other digits alone, yet `kb١` and `kb1` read the same
to a person; refusing them would lock out people who type with those keyboards, so they are
mapped instead. Case is kept: `AB` and `ab` are two names.

Knowledge bases created before names were canonical keep working: a name is looked up first as
the directory it names, then as the one existing directory whose canonical form it matches,
and a name that was valid under the earlier rules (letters, digits, `_-.`) can still be given.
Only new knowledge bases must have a canonical name holding at least one letter or digit, and
none may look the same as one that exists.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from kbqa.storage.errors import InvalidKBName, KBExists

MAX_NAME_LENGTH = 64
_PUNCTUATION = frozenset("_-.")


def _allowed(ch: str) -> bool:
    # Letters of any script (CJK ideographs are category Lo) and decimal digits only: no
    # separators, no marks, no control characters, nothing a shell or filesystem treats specially.
    category = unicodedata.category(ch)
    return category.startswith("L") or category == "Nd" or ch in _PUNCTUATION


def canonical_form(name: str) -> str:
    """NFKC, then each decimal digit (any script) as its ASCII digit. No validity check."""
    normalised = unicodedata.normalize("NFKC", name)
    return "".join(
        str(unicodedata.decimal(ch)) if unicodedata.category(ch) == "Nd" else ch
        for ch in normalised
    )


def _problem(name: str) -> str | None:
    """Why `name` (already normalised) cannot name a KB, or None."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters"
    if name.startswith("."):
        return "must not start with '.'"
    bad = sorted({ch for ch in name if not _allowed(ch)})
    if bad:
        shown = " ".join(repr(ch) for ch in bad[:5])
        return f"only letters, digits, '_', '-', '.' are allowed (found {shown})"
    return None


def validate_kb_name(name: str) -> str:
    """The name to find KB `name` by (its canonical form), else raise InvalidKBName.

    A name that is valid only in its NFC form (a KB created before names were canonical,
    whose NFKC form would be invalid) is returned in that form.
    """
    if not isinstance(name, str):
        raise InvalidKBName(f"invalid knowledge base name {name!r}: not a string")
    canonical = canonical_form(name)
    problem = _problem(canonical)
    if problem is None:
        return canonical
    earlier = unicodedata.normalize("NFC", name)  # the rule before names were canonical
    if _problem(earlier) is None:
        return earlier
    raise InvalidKBName(f"invalid knowledge base name {name!r}: {problem}")


def validate_new_kb_name(name: str) -> str:
    """The canonical name for a KB about to be created, else raise InvalidKBName."""
    if not isinstance(name, str):
        raise InvalidKBName(f"invalid knowledge base name {name!r}: not a string")
    canonical = canonical_form(name)
    problem = _problem(canonical)
    if problem is None and not any(_is_letter_or_digit(ch) for ch in canonical):
        problem = "must contain a letter or a digit"
    if problem is not None:
        raise InvalidKBName(f"invalid knowledge base name {name!r}: {problem}")
    return canonical


def _is_letter_or_digit(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category.startswith("L") or category == "Nd"


def kb_directory(kbs_dir: Path, name: str) -> Path:
    """Where KB `name` (as validate_kb_name returned it) lives: its own directory, else an
    existing one whose name has the same canonical form (a KB created before names were
    canonical), else its own directory (which does not exist)."""
    exact = kbs_dir / name
    if exact.is_dir():
        return exact
    return _lookalike(kbs_dir, name) or exact


def refuse_lookalike(kbs_dir: Path, name: str) -> None:
    """Raise KBExists if a KB whose name looks the same as `name` exists."""
    existing = _lookalike(kbs_dir, name)
    if existing is not None and existing.name != name:
        raise KBExists(
            f"knowledge base {name} would look the same as the existing {existing.name}: "
            f"use that one, or another name"
        )


def _lookalike(kbs_dir: Path, name: str) -> Path | None:
    key = canonical_form(name)
    if not kbs_dir.is_dir():
        return None
    for entry in sorted(kbs_dir.iterdir()):
        if not entry.name.startswith(".") and canonical_form(entry.name) == key and entry.is_dir():
            return entry
    return None
