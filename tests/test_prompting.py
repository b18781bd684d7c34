"""Prompt assembly: language, history checks, packing within the budget, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.errors import UsageError
from kbqa.prompting import (
    check_history,
    detect_language,
    fit_history,
    format_passage,
    pack_context,
    retrieval_query,
)
from kbqa.prompts import TemplateError, fill, load_template
from kbqa.storage.types import SearchHit


def hit(text: str, source: str = "a.md", page: int | None = None) -> SearchHit:
    return SearchHit("c", "d", text, source, page, None, 0.9)


def count(text: str) -> int:
    return len(text)


@pytest.mark.parametrize(
    ("question", "lang"),
    [
        ("那 INT4 呢？", "zh"),
        ("INT4 版本需要多少显存？", "zh"),
        ("How do I use jieba in Python?", "en"),
        ("What is the capital of France?", "en"),
        ("12345", "en"),
    ],
)
def test_detect_language(question: str, lang: str) -> None:
    assert detect_language(question) == lang


def test_history_must_be_pairs_of_strings() -> None:
    assert check_history(None) == []
    assert check_history([["q", "a"], ("q2", "a2")]) == [("q", "a"), ("q2", "a2")]
    for bad in ("text", {"q": "a"}, [["q"]], [["q", "a", "b"]], [[1, "a"]], ["qa"]):
        with pytest.raises(UsageError):
            check_history(bad)


def test_history_keeps_the_newest_turns_that_fit() -> None:
    history = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert fit_history(history, 2, 1000, count) == [("q2", "a2"), ("q3", "a3")]
    assert fit_history(history, 3, 20, count) == [("q3", "a3")]  # 4 chars + 16 overhead each
    assert fit_history(history, 0, 1000, count) == []


def test_packing_keeps_order_skips_what_does_not_fit_and_numbers_passages() -> None:
    hits = [hit("a" * 50), hit("b" * 500), hit("c" * 30)]
    packed, context = pack_context(hits, 120, count)
    assert [h.text[0] for h in packed] == ["a", "c"]
    assert context == format_passage(1, hits[0]) + "\n\n" + format_passage(2, hits[2])
    assert count(context) <= 120


def test_packing_cuts_the_first_hit_rather_than_giving_nothing() -> None:
    packed, context = pack_context([hit("x" * 1000, page=3)], 100, count)
    assert len(packed) == 1
    assert context.startswith("[1] a.md (p. 3)\nxxx") and count(context) < 100


def test_follow_up_search_joins_the_last_questions() -> None:
    history = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert retrieval_query(history, "q4") == "q2\nq3\nq4"
    assert retrieval_query([], "q") == "q"


def test_bundled_templates_have_their_placeholders() -> None:
    for lang in ("zh", "en"):
        assert "{context}" in load_template(lang) and "{question}" in load_template(lang)
        condense = load_template(lang, name="condense")
        assert "{history}" in condense and "{question}" in condense
        assert load_template(lang, name="no_context").strip()


def test_template_errors(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no templates for language"):
        load_template("fr")
    with pytest.raises(TemplateError, match="cannot read"):
        load_template("en", str(tmp_path / "missing.txt"))
    partial = tmp_path / "partial.txt"
    partial.write_text("{question} only", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"lacks \{context\}"):
        load_template("en", str(partial))


def test_fill_is_literal_and_single_pass() -> None:
    template = "{context}|{question}|{other}"
    assert fill(template, context="has {question}", question="q") == "has {question}|q|{other}"
