from __future__ import annotations

import logging

import pytest

from kbqa.storage.keyword import fts_match_expression, tokenize


def test_chinese_is_segmented_with_subwords_and_stopwords_dropped() -> None:
    tokens = tokenize("知识库的问答系统是什么")
    assert "知识库" in tokens and "知识" in tokens and "问答" in tokens
    assert "的" not in tokens and "是" not in tokens and "什么" not in tokens


def test_english_is_lowercased_without_stopwords_or_punctuation() -> None:
    assert tokenize("The Quick, brown fox!") == ["quick", "brown", "fox"]


@pytest.mark.parametrize(
    ("text", "whole", "parts"),
    [
        ("python3.9", "python3.9", ["python3", "9", "python", "3"]),
        ("INT4", "int4", ["int", "4"]),
        ("450.80.02", "450.80.02", ["450", "80", "02"]),
        ("chatglm2-6b", "chatglm2-6b", ["chatglm2", "6b", "chatglm", "2", "6"]),
    ],
)
def test_mixed_tokens_are_kept_whole_and_split(text: str, whole: str, parts: list[str]) -> None:
    tokens = tokenize(f"用 {text} 运行")
    assert tokens[tokens.index(whole) : tokens.index(whole) + 1 + len(parts)] == [whole, *parts]


def test_full_width_forms_are_folded() -> None:
    assert tokenize("ＩＮＴ４") == tokenize("INT4")


def test_mixed_chinese_and_latin_without_spaces() -> None:
    tokens = tokenize("安装python3.9需要INT4量化")
    assert {"安装", "python3.9", "int4", "量化"} <= set(tokens)


def test_sentence_end_dot_is_not_part_of_a_token() -> None:
    assert tokenize("Use version 2.") == ["use", "version", "2"]


def test_jieba_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    tokenize("结巴分词初始化不应输出日志")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert logging.getLogger("jieba").level >= logging.ERROR


@pytest.mark.parametrize("query", ['"', "AND(", "*", "NEAR", "a OR", ":", "^x", "col:x", "'\"()"])
def test_match_expression_quotes_every_term(query: str) -> None:
    expression = fts_match_expression(query)
    if expression is not None:
        for term in expression.split(" OR "):
            assert term.startswith('"') and term.endswith('"')


def test_match_expression_is_none_without_tokens() -> None:
    assert fts_match_expression("的 了 , . !") is None
