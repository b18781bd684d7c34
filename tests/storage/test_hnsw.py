"""Approximate (HNSW) index: chosen by setting or size, its recall against exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from storage_helpers import make_doc, random_doc, unit_vectors

from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.vector_index import read_index

DIM = 32


def _fill(kbs_dir: Path, rng: np.random.Generator, docs: int, per_doc: int) -> None:
    with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", per_doc, dim=DIM) for i in range(docs)], [])


def test_hnsw_recall_against_exact(kbs_dir: Path, rng: np.random.Generator) -> None:
    _fill(kbs_dir, rng, docs=40, per_doc=100)  # 4000 chunks
    queries = unit_vectors(rng, 50, DIM)
    with (
        KnowledgeBase.open(kbs_dir, "kb", index="flat") as exact,
        KnowledgeBase.open(kbs_dir, "kb", index="hnsw") as approximate,
    ):
        found = 0
        for query in queries:
            truth = {h.chunk_id for h in exact.search(query, "", 10, candidates=10)}
            got = {h.chunk_id for h in approximate.search(query, "", 10, candidates=10)}
            found += len(truth & got)
        assert found / (10 * len(queries)) >= 0.95


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_auto_switches_at_threshold_and_survives_removals(
    kbs_dir: Path, rng: np.random.Generator
) -> None:
    kb_dir = kbs_dir / "kb"
    with KnowledgeBase.create(
        kbs_dir, "kb", embedding="fake", dim=DIM, approximate_threshold=100
    ) as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", 30, dim=DIM) for i in range(3)], [])
        assert read_index(kb_dir / "index.1.faiss").kind == "flat"  # 90 chunks
        kb.sync([random_doc(rng, "/docs/3.txt", 30, dim=DIM)], [])
        assert read_index(kb_dir / "index.2.faiss").kind == "hnsw"  # 120 chunks
        kb.sync([random_doc(rng, "/docs/4.txt", 30, dim=DIM)], ["/docs/0.txt"])  # rebuild
        assert read_index(kb_dir / "index.3.faiss").kind == "hnsw"
        assert kb.check() == []
        kb.remove_documents(["/docs/1.txt", "/docs/2.txt"])  # 60 chunks: back to exact
        assert read_index(kb_dir / "index.4.faiss").kind == "flat"
        assert kb.check() == []


def test_hnsw_search_scores_and_filters(kbs_dir: Path, rng: np.random.Generator) -> None:
    with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM, index="hnsw") as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", 50, dim=DIM) for i in range(10)], [])
        target = unit_vectors(rng, 1, DIM)
        kb.sync([make_doc("/docs/target.txt", ["the target"], target)], [])
        hit = kb.search(target[0], "", 1)[0]
        assert hit.text == "the target" and abs(hit.score - 1.0) < 1e-5
        # A selective filter on an approximate index still returns k hits, exactly ranked.
        hits = kb.search(target[0], "", 5, sources=["3.txt"])
        assert len(hits) == 5 and {h.source for h in hits} == {"3.txt"}
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert kb.check() == []
