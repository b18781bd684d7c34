"""Hybrid search over one KB snapshot: dense k-NN + BM25 keyword search, fused.

`keyword_search` is the SQLite (FTS5) half of kbqa.storage.sqlite_store; `hybrid_search` works on
any kbqa.storage.store.Store.

Runs inside the caller's read transaction, with the FAISS index that matches its generation,
so the ids FAISS returns always resolve to the rows of that same snapshot. A Milvus collection
may be a little ahead of the snapshot (another process is writing); ids it returns that the
snapshot lacks are skipped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from kbqa.storage.dense import DenseIndex
from kbqa.storage.fusion import dense_weight_for, fuse
from kbqa.storage.keyword import fts_match_expression
from kbqa.storage.rows import IN_JSON
from kbqa.storage.types import SearchHit, Vectors

if TYPE_CHECKING:
    from kbqa.storage.store import Store

# Chunks of the documents a `sources` list names, by relative source or by absolute path.
SOURCE_FILTER = (
    "SELECT c.id FROM chunks c JOIN documents d ON d.doc_id = c.doc_id "
    f"WHERE d.source {IN_JSON} OR d.path {IN_JSON}"
)


def keyword_search(
    conn: sqlite3.Connection, query_text: str, n: int, sources: Sequence[str] | None
) -> list[tuple[int, float]]:
    """Top `n` (rowid, bm25) with bm25 > 0, best first."""
    expression = fts_match_expression(query_text)
    if expression is None or n <= 0:
        return []
    # FTS5's bm25() is "lower is better" (negative); negate it so higher is better.
    sql = "SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
    params: list[object] = [expression]
    if sources is not None:
        sql += f" AND rowid IN ({SOURCE_FILTER})"
        params += [json.dumps(list(sources))] * 2
    sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
    return [(rowid, float(score)) for rowid, score in conn.execute(sql, [*params, n])]


def hybrid_search(
    store: Store,
    index: DenseIndex,
    query: Vectors,
    query_text: str,
    k: int,
    *,
    candidates: int,
    sources: Sequence[str] | None,
    dense_weight: float | None,
    keyword_weight: float,
    kb_name: str,
) -> list[SearchHit]:
    """`query` is a unit vector [dim]. Hits ordered by fusion, scored by dense cosine."""
    if k <= 0:
        return []
    n = max(candidates, k)
    allowed = None
    if sources is not None:
        allowed = store.source_rowids(sources)
        if len(allowed) == 0:
            return []
    # Equal scores (duplicate chunks) in rowid order, whichever backend found them.
    dense = sorted(index.search(query, n, allowed, sources), key=lambda hit: (-hit[1], hit[0]))
    keyword = store.keyword_search(query_text, n, sources)
    weight = dense_weight_for(query_text) if dense_weight is None else dense_weight
    fused = fuse(dense, keyword, dense_weight=weight, keyword_weight=keyword_weight)[:k]
    stored = store.load_chunks("id", [c.key for c in fused], index.dim, kb_name)
    hits = []
    for candidate in fused:
        chunk = stored.get(candidate.key)
        if chunk is None:  # cannot happen within one snapshot; check() reports such ids
            continue
        # Score every hit from its stored vector: exact even when HNSW found it, and
        # defined for keyword-only hits that dense search did not return.
        cosine = float(chunk.vector @ query)
        extra = {"dense": cosine, "keyword": candidate.keyword, "fused": candidate.fused}
        score = min(max(cosine, 0.0), 1.0)
        hits.append(replace(chunk.hit, score=score, extra=extra))
    return hits
