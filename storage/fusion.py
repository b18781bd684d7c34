"""Weighted reciprocal rank fusion of the dense and the keyword candidate lists.

    fused(c) = w_dense   * cos(c)  / (K + rank_dense(c))
             + w_keyword * kw(c)   / (K + rank_keyword(c))

ranks from 1; a list that lacks c contributes 0; K = 60 (the usual RRF constant). cos is the
dense cosine clipped to 0..1 and kw the chunk's BM25 divided by the best BM25 among the
keyword candidates (0..1).

Plain RRF uses ranks only, so a dense list that is noise still hands its top candidate a
full 1/(K+1), and a chunk that merely shares one common token with the query ("4" from
"INT4") plus a noisy dense rank 1 outranks the chunk that matches every query term. Scaling
each contribution by the strength of its own signal keeps weak evidence weak.

For queries containing CJK characters the dense weight drops to 0.25 unless the KB's embedding
model reads Chinese (its name says so: bge-*-zh, m3e, text2vec-*-chinese, bge-m3, multilingual
models). The bundled all-MiniLM-L6-v2 is English-only: on Chinese text its cosines are high
and uninformative, while BM25 over jieba tokens is reliable. Measured on bench/eval_retrieval.py
(Chinese questions on Chinese documents): dense alone puts the answer first for 3% of the
questions, BM25 alone for 69%; fused with weight 0.5 the noisy dense half pushed good keyword
hits down to 53%, with 0.25 fusion keeps BM25's 69% and keeps the dense signal's gain on
Chinese questions about English documents. Callers may pass dense_weight explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kbqa.storage.keyword import has_cjk

RANK_CONSTANT = 60
CJK_DENSE_WEIGHT = 0.25
_READS_CHINESE = re.compile(r"zh|chinese|m3e|text2vec|bge-m3|multilingual|labse", re.IGNORECASE)


@dataclass(frozen=True)
class FusedCandidate:
    key: int
    fused: float
    keyword: float
    """BM25 divided by the best BM25 among the keyword candidates: 0..1, 0 = no keyword match."""


def reads_chinese(embedding: str) -> bool:
    """Whether an embedding model's name marks it as Chinese-capable (see the module doc)."""
    return _READS_CHINESE.search(embedding) is not None


def dense_weight_for(query_text: str, embedding: str = "") -> float:
    if has_cjk(query_text) and not reads_chinese(embedding):
        return CJK_DENSE_WEIGHT
    return 1.0


def fuse(
    dense: Sequence[tuple[int, float]],
    keyword: Sequence[tuple[int, float]],
    *,
    dense_weight: float,
    keyword_weight: float = 1.0,
    rank_constant: int = RANK_CONSTANT,
) -> list[FusedCandidate]:
    """Fuse `dense` ((key, cosine), best first) with `keyword` ((key, bm25 > 0), best first).

    Returns every candidate of either list, best first; ties go to the stronger keyword match.
    """
    fused: dict[int, float] = {}
    for rank, (key, cosine) in enumerate(dense, start=1):
        strength = min(max(cosine, 0.0), 1.0)
        fused[key] = fused.get(key, 0.0) + dense_weight * strength / (rank_constant + rank)
    best_bm25 = max((score for _, score in keyword), default=0.0)
    keyword_norm: dict[int, float] = {}
    for rank, (key, score) in enumerate(keyword, start=1):
        strength = score / best_bm25 if best_bm25 > 0 else 0.0
        keyword_norm[key] = strength
        fused[key] = fused.get(key, 0.0) + keyword_weight * strength / (rank_constant + rank)
    ordered = sorted(fused.items(), key=lambda item: (-item[1], -keyword_norm.get(item[0], 0.0)))
    return [FusedCandidate(key, score, keyword_norm.get(key, 0.0)) for key, score in ordered]
