"""One crude English stemmer for the whole of kbqa: the forms of a word as one key.

`stem("installing") == stem("installed") == stem("install")`, and a name's forms too
(P-Tune, P-Tuning, P-Tuned, squashed to ptune, ptuning, ptuned: all `ptun`). Relevance uses it
to find a question's names in any of their forms (kbqa.relevance), evidence to match an
answer's or a question's words in a sentence (kbqa.evidence). It cuts one ending off words of
five letters or more and nothing else: crude on purpose (no dictionary, nothing to load), it
only has to give one word's forms one key, and two different words the same key rarely.
"""

from __future__ import annotations

import re

_ENDING = re.compile(r"(?:ing|ed|ly|es|e|s)$")
MIN_LENGTH = 5
"""Shorter words keep their ending: "uses", "bed" and "yes" are not forms of "us", "b", "y"."""


def stem(word: str) -> str:
    """`word` (lower case) without its ending, for a word of letters only, MIN_LENGTH or longer."""
    if len(word) < MIN_LENGTH or not word.isalpha():
        return word
    return _ENDING.sub("", word)
