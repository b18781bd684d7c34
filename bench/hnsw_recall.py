"""Recall@10 of the approximate (HNSW) index against exact search, on the same vectors.

    .venv/bin/python bench/hnsw_recall.py [--size 100000] [--work DIR]

Three vector sets, all dim 384 (all-MiniLM-L6-v2): the real chunk embeddings of the retrieval
evaluation's KB (bench/eval_retrieval.py; a KB this small stays on the exact index unless
`storage.index = "hnsw"`), `--size` real-like vectors (each mixes two real chunk embeddings
plus noise, keeping the clustered shape of real text embeddings) and `--size` random unit
vectors (uniform on the sphere: the hardest case for a graph index). Queries are the
evaluation's questions embedded by the model (200 random unit vectors for the random set).
Both indexes are kbqa.storage.vector_index.VectorIndex with the parameters KBs use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_retrieval import EmbeddingCache, build_kbqa, kb_chunks
from retrieval_corpus import write_corpus
from retrieval_questions import QUESTIONS

from kbqa.storage.embeddings import get_embedder

EF_SEARCH = (96, 256, 512)
"""efSearch values tried; KBs use kbqa.storage.vector_index.HNSW_EF_SEARCH (96, or 2k if larger)."""


def recall_at_10(
    vectors: np.ndarray, queries: np.ndarray
) -> tuple[float, list[tuple[float, float]]]:
    """HNSW build seconds, then (recall@10 against exact search, ms per query) per efSearch."""
    from kbqa.storage import vector_index
    from kbqa.storage.vector_index import VectorIndex

    ids = np.arange(len(vectors), dtype=np.int64)
    flat = VectorIndex.build("flat", vectors.shape[1], ids, vectors)
    exact = [{i for i, _ in flat.search(q, 10)} for q in queries]
    started = time.perf_counter()
    hnsw = VectorIndex.build("hnsw", vectors.shape[1], ids, vectors)
    build_s = time.perf_counter() - started
    default = vector_index.HNSW_EF_SEARCH
    results = []
    try:
        for ef in EF_SEARCH:
            vector_index.HNSW_EF_SEARCH = ef  # read by VectorIndex.search at each call
            started = time.perf_counter()
            approximate = [{i for i, _ in hnsw.search(q, 10)} for q in queries]
            query_ms = 1000 * (time.perf_counter() - started) / len(queries)
            found = sum(len(a & e) for a, e in zip(approximate, exact, strict=True))
            results.append((found / (10 * len(queries)), query_ms))
    finally:
        vector_index.HNSW_EF_SEARCH = default
    return build_s, results


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def run(work: Path, size: int) -> None:
    corpus = write_corpus(work / "docs")
    build_kbqa(work / "home", corpus)
    _, real = kb_chunks(work / "home")
    questions = get_embedder("default").embed([q.text for q in QUESTIONS])
    rng = np.random.default_rng(0)
    dim = real.shape[1]
    # Real-like: each vector mixes two real chunk embeddings plus noise (cosine ~0.8 to the
    # first), so the set keeps the clustered shape of real text embeddings at any size.
    first = real[rng.integers(len(real), size=size)]
    second = real[rng.integers(len(real), size=size)]
    noise = rng.normal(size=(size, dim)).astype(np.float32) / np.sqrt(dim)
    real_like = unit(0.8 * first + 0.3 * second + 0.45 * noise)
    sets = {
        f"eval KB ({len(real)} real chunk vectors), question queries": (real, questions),
        f"{size} real-like vectors, question queries": (real_like, questions),
        f"{size} random unit vectors, random queries": (
            unit(rng.normal(size=(size, dim))),
            unit(rng.normal(size=(200, dim))),
        ),
    }
    columns = " | ".join(f"efSearch {ef}: recall@10, ms/query" for ef in EF_SEARCH)
    print(f"| vectors (dim 384) | HNSW build s | {columns} |")
    print("|---|---|" + "---|" * len(EF_SEARCH))
    for label, (vectors, queries) in sets.items():
        build_s, results = recall_at_10(vectors, queries)
        cells = " | ".join(f"{recall:.3f}, {ms:.2f}" for recall, ms in results)
        print(f"| {label} | {build_s:.1f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--work", help="reuse the KB and embeddings of eval_retrieval.py --work")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbqa-hnsw-") as tmp:
        work = Path(args.work or tmp)
        cache = EmbeddingCache(work / "embeddings.npz") if args.work else None
        if cache is not None:
            cache.install()
        run(work, args.size)
        if cache is not None:
            cache.save()


if __name__ == "__main__":
    main()
