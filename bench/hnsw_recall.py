"""Recall@10 of the approximate (HNSW) index against exact search, on the same vectors.

    .venv/bin/python bench/hnsw_recall.py [--size 100000] [--work DIR]

Three vector sets, all dim 384 (all-MiniLM-L6-v2): the real chunk embeddings of the retrieval
evaluation's KB (bench/eval_retrieval.py; a KB this small stays on the exact index unless
`storage.index = "hnsw"`), `--size` real-like vectors (each mixes two real chunk embeddings
plus noise, keeping the clustered shape of real text embeddings) and `--size` random unit
vectors (uniform on the sphere: the hardest case for a graph index). Queries are the
evaluation's questions embedded by the model (200 random unit vectors for the random set).
Both indexes are storage.vector_index.VectorIndex with the parameters KBs use.
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

from storage.embeddings import get_embedder


def recall_at_10(vectors: np.ndarray, queries: np.ndarray) -> tuple[float, float, float]:
    """(recall@10 of HNSW vs exact, HNSW build s, HNSW ms per query) on the same vectors."""
    from storage.vector_index import VectorIndex

    ids = np.arange(len(vectors), dtype=np.int64)
    flat = VectorIndex.build("flat", vectors.shape[1], ids, vectors)
    started = time.perf_counter()
    hnsw = VectorIndex.build("hnsw", vectors.shape[1], ids, vectors)
    build_s = time.perf_counter() - started
    found = 0
    started = time.perf_counter()
    approximate = [{i for i, _ in hnsw.search(q, 10)} for q in queries]
    query_ms = 1000 * (time.perf_counter() - started) / len(queries)
    for q, got in zip(queries, approximate, strict=True):
        found += len(got & {i for i, _ in flat.search(q, 10)})
    return found / (10 * len(queries)), build_s, query_ms


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
    print("| vectors (dim 384) | recall@10 | HNSW build s | HNSW ms/query |")
    print("|---|---|---|---|")
    for label, (vectors, queries) in sets.items():
        recall, build_s, query_ms = recall_at_10(vectors, queries)
        print(f"| {label} | {recall:.3f} | {build_s:.1f} | {query_ms:.2f} |")


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
