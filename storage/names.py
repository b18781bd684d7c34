"""Knowledge-base names: they become directory names, so they are checked before any path use."""

from __future__ import annotations

import unicodedata

from storage.errors import InvalidKBName

MAX_NAME_LENGTH = 64
_PUNCTUATION = frozenset("_-.")


def _allowed(ch: str) -> bool:
    # Letters of any script (CJK ideographs are category Lo) and decimal digits only: no
    # separators, no marks, no control characters, nothing a shell or filesystem treats specially.
    category = unicodedata.category(ch)
    return category.startswith("L") or category == "Nd" or ch in _PUNCTUATION


def validate_kb_name(name: str) -> str:
    """Return `name` (NFC-normalised) if it is a valid KB name, else raise InvalidKBName."""
    if not isinstance(name, str):
        raise InvalidKBName(f"invalid knowledge base name {name!r}: not a string")
    # NFC so that "café" typed on macOS (NFD) and on Linux names the same directory.
    normalised = unicodedata.normalize("NFC", name)
    if not 1 <= len(normalised) <= MAX_NAME_LENGTH:
        raise InvalidKBName(
            f"invalid knowledge base name {name!r}: must be 1 to {MAX_NAME_LENGTH} characters"
        )
    if normalised.startswith("."):
        raise InvalidKBName(f"invalid knowledge base name {name!r}: must not start with '.'")
    bad = sorted({ch for ch in normalised if not _allowed(ch)})
    if bad:
        shown = " ".join(repr(ch) for ch in bad[:5])
        raise InvalidKBName(
            f"invalid knowledge base name {name!r}: only letters, digits, '_', '-', '.' "
            f"are allowed (found {shown})"
        )
    return normalised
