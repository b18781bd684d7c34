from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import DIM, make_doc, random_doc, unit_vectors

from kbqa.storage.fusion import fuse
from kbqa.storage.kb import KnowledgeBase

TEXTS = [
    "ChatGLM2-6B 在 INT4 量化下需要约 6GB 显存。",
    "安装依赖需要 python3.9 或更高版本。",
    "NVIDIA driver 450.80.02 supports CUDA 11.0 on Linux.",
    "The quick brown fox jumps over the lazy dog.",
    "知识库问答系统从本地文档中检索答案并注明出处。",
    "FP16 推理需要 13GB 显存,适合单张高端显卡。",
]


@pytest.fixture
def filled(kb: KnowledgeBase, rng: np.random.Generator) -> tuple[KnowledgeBase, np.ndarray]:
    vectors = unit_vectors(rng, len(TEXTS))
    kb.sync(
        [
            make_doc("/docs/a.md", TEXTS[:3], vectors[:3]),
            make_doc("/docs/b.md", TEXTS[3:], vectors[3:]),
        ],
        [],
    )
    # Plus unrelated filler so BM25 statistics and dense ranks are not trivial.
    kb.sync([random_doc(rng, f"/docs/filler{i}.txt", 5) for i in range(10)], [])
    return kb, vectors


def test_dense_ordering_by_cosine(filled: tuple[KnowledgeBase, np.ndarray]) -> None:
    kb, vectors = filled
    hits = kb.search(vectors[3], "", 5)
    assert hits[0].text == TEXTS[3]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    cosines = [h.extra["dense"] for h in hits]
    assert cosines == sorted(cosines, reverse=True)
    assert hits[0].source == "b.md" and hits[0].kb == "test"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("INT4 量化 显存", 0),
        ("int4", 0),
        ("chatglm2-6b", 0),
        ("python3.9 安装", 1),
        ("450.80.02", 2),
        ("driver CUDA", 2),
        ("lazy dogs fox", 3),
        ("知识库如何注明出处", 4),
        ("FP16 需要多少显存", 5),
    ],
)
def test_keyword_hit_wins_over_unrelated_dense(
    filled: tuple[KnowledgeBase, np.ndarray], rng: np.random.Generator, query: str, expected: int
) -> None:
    kb, _ = filled
    noise = unit_vectors(rng, 1)[0]  # a dense signal unrelated to the query
    hits = kb.search(noise, query, 3)
    assert hits[0].text == TEXTS[expected]
    assert hits[0].extra["keyword"] == 1.0
    # The score is still the dense cosine of that chunk, clipped into 0..1.
    dense = hits[0].extra["dense"]
    assert hits[0].score == pytest.approx(min(max(dense, 0.0), 1.0))


def test_fusion_prefers_chunks_found_by_both(filled: tuple[KnowledgeBase, np.ndarray]) -> None:
    kb, vectors = filled
    # "显存" matches chunks 0 and 5; the dense signal points to 5.
    hits = kb.search(vectors[5], "显存", 3)
    assert [h.text for h in hits[:2]] == [TEXTS[5], TEXTS[0]]
    fused = [h.extra["fused"] for h in hits]
    assert fused == sorted(fused, reverse=True)


def test_keyword_score_is_normalised(
    filled: tuple[KnowledgeBase, np.ndarray], rng: np.random.Generator
) -> None:
    kb, _ = filled
    hits = kb.search(unit_vectors(rng, 1)[0], "显存 INT4", 10)
    keyword = [h.extra["keyword"] for h in hits]
    assert max(keyword) == 1.0 and all(0.0 <= s <= 1.0 for s in keyword)


def test_sources_filter_applies_before_k(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    query = unit_vectors(rng, 1)[0]
    # 50 chunks nearly identical to the query in "near.txt", one far chunk in "far.txt".
    near = query + 0.01 * unit_vectors(rng, 50)
    kb.sync([make_doc("/docs/near.txt", [f"near {i}" for i in range(50)], near)], [])
    kb.sync([make_doc("/docs/far.txt", ["far away"], -query[None, :])], [])
    hits = kb.search(query, "near", 3, candidates=5, sources=["far.txt"])
    assert [h.text for h in hits] == ["far away"]
    assert hits[0].score == 0.0  # cosine -1 clipped
    by_path = kb.search(query, "", 3, sources=["/docs/far.txt"])
    assert [h.text for h in by_path] == ["far away"]
    assert kb.search(query, "near", 3, sources=["nope.txt"]) == []
    assert len(kb.search(query, "near", 3, sources=["far.txt", "near.txt"])) == 3


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "AND(",
        "*",
        "NEAR",
        "NEAR(a b, 3)",
        "a OR",
        "OR",
        "NOT x",
        "col:x",
        "^x",
        "x*",
        "'",
        '"unterminated',
        "()",
        "{a b}",
        "-x",
        "+",
        "\x00",
        "的",
        "",
        "   ",
        "a" * 5000,
        "知识 AND 库",
    ],
)
def test_hostile_queries_never_error(filled: tuple[KnowledgeBase, np.ndarray], query: str) -> None:
    kb, vectors = filled
    hits = kb.search(vectors[0], query, 3)
    assert len(hits) == 3


def test_near_is_a_plain_word(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    kb.sync([make_doc("/docs/x.txt", ["near the river", "far from it"], unit_vectors(rng, 2))], [])
    hits = kb.search(unit_vectors(rng, 1)[0], "NEAR", 1)
    assert hits[0].text == "near the river" and hits[0].extra["keyword"] == 1.0


def test_empty_kb_and_k_zero(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    assert kb.search(unit_vectors(rng, 1)[0], "anything", 5) == []
    kb.sync([random_doc(rng, "/docs/a.txt", 3)], [])
    assert kb.search(unit_vectors(rng, 1)[0], "anything", 0) == []
    assert len(kb.search(unit_vectors(rng, 1)[0], "", 10)) == 3


def test_unnormalised_query_vector_gives_cosine(
    kb: KnowledgeBase, rng: np.random.Generator
) -> None:
    doc = random_doc(rng, "/docs/a.txt", 3)
    kb.sync([doc], [])
    assert kb.search(doc.vectors[1] * 7.0, "", 1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_fuse_rewards_agreement_and_strength() -> None:
    # A chunk in both lists beats one in either list.
    both = fuse([(1, 0.9), (2, 0.8)], [(2, 5.0), (3, 4.0)], dense_weight=1.0)
    assert [c.key for c in both] == [2, 1, 3]
    assert [c.keyword for c in both] == [1.0, 0.0, 0.8]


def test_fuse_weak_keyword_plus_noisy_dense_loses_to_strong_keyword() -> None:
    # Key 7 shares one common token with the query and is dense rank 1 by noise (cos 0.4);
    # key 1 matches every query term and is nowhere in the dense list.
    fused = fuse([(7, 0.4), (8, 0.35)], [(1, 12.0), (7, 1.0)], dense_weight=1.0)
    assert fused[0].key == 1


def test_fuse_half_dense_weight_puts_keyword_hits_first() -> None:
    dense = [(k, 0.9) for k in range(100, 130)]
    keyword = [(k, 60.0 - k) for k in range(30)]
    fused = fuse(dense, keyword, dense_weight=0.5)
    assert {c.key for c in fused[:10]} == set(range(10))
    assert fused[-1].keyword == 0.0


def test_cjk_queries_weight_keywords_higher(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    query = unit_vectors(rng, 1)[0]
    texts = ["无关内容甲", "显卡驱动安装说明"] + [f"filler {i}" for i in range(8)]
    vectors = unit_vectors(rng, len(texts))
    vectors[0] = query  # the dense top hit is unrelated
    kb.sync([make_doc("/docs/a.txt", texts, vectors)], [])
    assert kb.search(query, "显卡驱动", 1)[0].text == "显卡驱动安装说明"
    assert kb.search(query, "显卡驱动", 1, dense_weight=2.0)[0].text == "无关内容甲"


def test_dim_constant_matches_fixture(kb: KnowledgeBase) -> None:
    assert kb.info().dim == DIM
