"""The dense weight of CJK queries follows the KB's embedding model (kbqa.storage.fusion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM, make_doc, unit_vectors

from kbqa.storage.fusion import (
    CJK_DENSE_WEIGHT,
    RANK_CONSTANT,
    dense_weight_for,
    fuse,
    reads_chinese,
)
from kbqa.storage.kb import KnowledgeBase


@pytest.mark.parametrize(
    ("embedding", "chinese"),
    [
        ("default", False),
        ("", False),
        ("sentence-transformers/all-MiniLM-L6-v2", False),
        ("/models/bge-small-zh-v1.5", True),
        ("moka-ai/m3e-base", True),
        ("shibing624/text2vec-base-chinese", True),
        ("BAAI/bge-m3", True),
        ("paraphrase-multilingual-MiniLM-L12-v2", True),
    ],
)
def test_reads_chinese_by_model_name(embedding: str, chinese: bool) -> None:
    assert reads_chinese(embedding) is chinese
    assert dense_weight_for("显卡驱动", embedding) == (1.0 if chinese else CJK_DENSE_WEIGHT)
    assert dense_weight_for("GPU driver", embedding) == 1.0


def test_noisy_dense_rank_one_no_longer_beats_the_full_keyword_match() -> None:
    # Key 2 matches most query terms (BM25 0.8 of the best) and is dense rank 1 by noise
    # (cosine 0.6, typical of an English-only model on Chinese text); key 1 matches every term.
    dense = [(2, 0.6), (3, 0.58)]
    keyword = [(1, 10.0), (2, 8.0)]
    assert fuse(dense, keyword, dense_weight=0.5)[0].key == 2  # the old CJK weight
    assert fuse(dense, keyword, dense_weight=CJK_DENSE_WEIGHT)[0].key == 1


@pytest.mark.parametrize(
    ("embedding", "weight"), [("default", CJK_DENSE_WEIGHT), ("bge-small-zh", 1.0)]
)
def test_kb_search_weights_dense_by_its_embedding(
    tmp_path: Path, embedding: str, weight: float
) -> None:
    rng = np.random.default_rng(7)
    query = unit_vectors(rng, 1)[0]
    vectors = unit_vectors(rng, 3)
    vectors[0] = query  # dense rank 1, cosine 1, no keyword match
    texts = ["无关内容", "其他文字", "更多段落"]
    with KnowledgeBase.create(tmp_path, "kb", embedding=embedding, dim=DIM) as kb:
        kb.sync([make_doc("/docs/a.txt", texts, vectors)], [])
        hit = next(h for h in kb.search(query, "显卡驱动", 3) if h.text == "无关内容")
    assert hit.extra["fused"] == pytest.approx(weight / (RANK_CONSTANT + 1))
