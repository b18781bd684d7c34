"""Keyword search over mixed Chinese / English / numbers, written the ways people type them."""

from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import make_doc, random_doc, unit_vectors

from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.keyword import tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("python3.9", {"python3.9", "python", "3.9"}),
        ("CUDA11.8", {"cuda11.8", "cuda", "11.8"}),
        ("v1.2.3", {"v1.2.3", "1.2.3"}),
        ("bge-small-zh-v1.5", {"bge-small-zh-v1.5", "bge", "small", "zh", "1.5"}),
        ("驱动版本450.80.02", {"驱动", "版本", "450.80.02"}),
        ("RTX4090显卡", {"rtx4090", "rtx", "4090", "显卡"}),
        ("C++", {"cpp"}),
        ("用C++11写", {"cpp11", "cpp", "11"}),
        ("C#语言", {"csharp", "语言"}),
    ],
)
def test_mixed_tokens(text: str, expected: set[str]) -> None:
    assert expected <= set(tokenize(text))


def test_dotted_number_of_a_word_is_not_repeated() -> None:
    assert tokenize("450.80.02").count("450.80.02") == 1


def test_plus_and_hash_elsewhere_are_not_language_names() -> None:
    assert "cpp" not in tokenize("abc++ a+b #c")
    assert "csharp" not in tokenize("abc#")


TEXTS = [
    "部署要求：Python 3.9 及以上，CUDA 11.8。",
    "旧版说明：python3.7 已不再支持，请升级。",
    "驱动版本 450.80.02 已验证可用。",
    "驱动版本 450.80.01 存在显存泄漏问题。",
    "C++ 接口：头文件位于 include 目录。",
    "C 语言接口只提供基本函数。",
    "INT8 量化需要约 10GB 显存。",
    "INT4 量化需要约 6GB 显存。",
]


@pytest.fixture
def mixed(kb: KnowledgeBase, rng: np.random.Generator) -> KnowledgeBase:
    kb.sync([make_doc("/docs/notes.md", TEXTS, unit_vectors(rng, len(TEXTS)))], [])
    kb.sync([random_doc(rng, f"/docs/filler{i}.txt", 5) for i in range(6)], [])
    return kb


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("python3.9 能用吗", 0),  # typed without the space the document has
        ("cuda11.8", 0),
        ("450.80.02 驱动", 2),  # the exact version beats its sibling release
        ("450.80.01 有什么问题", 3),
        ("C++ 头文件在哪", 4),
        ("c++接口", 4),
        ("INT4 显存", 7),
        ("ＩＮＴ４量化", 7),  # full-width, as Chinese input methods type it
    ],
)
def test_keyword_search_finds_the_mixed_token(
    mixed: KnowledgeBase, rng: np.random.Generator, query: str, expected: int
) -> None:
    noise = unit_vectors(rng, 1)[0]  # a dense signal unrelated to the query
    hits = mixed.search(noise, query, 3)
    assert hits[0].text == TEXTS[expected]
