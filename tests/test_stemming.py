"""The one stemmer relevance and evidence share."""

from __future__ import annotations

import pytest

from kbqa.stemming import stem


@pytest.mark.parametrize(
    "forms",
    [
        ("install", "installing", "installed", "installs"),
        ("ptune", "ptuning", "ptuned"),  # a name's forms, squashed: P-Tune, P-Tuning, P-Tuned
        ("encode", "encoded", "encoding", "encodes"),
        ("quick", "quickly"),
    ],
)
def test_the_forms_of_a_word_share_one_key(forms: tuple[str, ...]) -> None:
    assert len({stem(form) for form in forms}) == 1


@pytest.mark.parametrize("word", ["uses", "bed", "yes", "int4s", "qwen7b", "规则"])
def test_short_words_and_words_with_digits_keep_their_ending(word: str) -> None:
    assert stem(word) == word


def test_different_words_keep_different_keys() -> None:
    assert stem("install") != stem("instance")
    assert stem("token") != stem("tokenizer")
