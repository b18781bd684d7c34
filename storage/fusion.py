"""Weighted reciprocal rank fusion of the dense and the keyword candidate lists.

fused(c) = w_dense / (K + rank_dense(c)) + w_keyword / (K + rank_keyword(c)), ranks from 1,
a missing list contributes 0, K = 60 (the usual RRF constant, which keeps any single list
from dominating through one top rank).

Why weights: the bundled embedding model is English-only, so for Chinese questions its
ranking is close to noise while BM25 over jieba tokens is reliable. With equal weights the
top dense candidate (noise) ties with the top keyword hit; with the dense weight halved for
queries containing CJK, a keyword hit at rank r still outranks the best dense-only candidate
for every r < 62, i.e. for the whole candidate list, and dense similarity only reorders
chunks that keyword search also found. A KB built with a Chinese-capable embedding can pass
dense_weight=1.0 explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.keyword import has_cjk

RANK_CONSTANT = 60
CJK_DENSE_WEIGHT = 0.5


@dataclass(frozen=True)
class FusedCandidate:
    key: int
    fused: float
    keyword: float
    """BM25 divided by the best BM25 among the keyword candidates: 0..1, 0 = no keyword match."""


def dense_weight_for(query_text: str) -> float:
    return CJK_DENSE_WEIGHT if has_cjk(query_text) else 1.0


def fuse(
    dense: Sequence[int],
    keyword: Sequence[tuple[int, float]],
    *,
    dense_weight: float,
    keyword_weight: float = 1.0,
    rank_constant: int = RANK_CONSTANT,
) -> list[FusedCandidate]:
    """Fuse `dense` (keys, best first) with `keyword` ((key, bm25 > 0), best first).

    Returns every candidate of either list, best first; ties go to the stronger keyword match.
    """
    fused: dict[int, float] = {}
    for rank, key in enumerate(dense, start=1):
        fused[key] = fused.get(key, 0.0) + dense_weight / (rank_constant + rank)
    best_bm25 = max((score for _, score in keyword), default=0.0)
    keyword_norm: dict[int, float] = {}
    for rank, (key, score) in enumerate(keyword, start=1):
        fused[key] = fused.get(key, 0.0) + keyword_weight / (rank_constant + rank)
        keyword_norm[key] = score / best_bm25 if best_bm25 > 0 else 0.0
    ordered = sorted(fused.items(), key=lambda item: (-item[1], -keyword_norm.get(item[0], 0.0)))
    return [FusedCandidate(key, score, keyword_norm.get(key, 0.0)) for key, score in ordered]
