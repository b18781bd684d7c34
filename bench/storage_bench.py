"""Storage benchmarks on this machine: ingestion throughput, search latency and memory vs size.

    .venv/bin/python bench/storage_bench.py [--sizes 1000,10000,100000] [--no-hnsw]

1. Ingestion: real documents of the retrieval evaluation (bench/retrieval_corpus.py, read
   from installed packages at run time; `--documents`, half English READMEs, half Chinese man
   pages) through `ingest_paths` (load, split, embed, store), in chunks/s end to end; then
   the embedding model alone on a sample of the same chunks.
2. Search: one KB grown to each size. Texts are real-looking: each chunk joins 2–5 sentences
   drawn from those documents (Chinese and English), so BM25 sees real term statistics; the
   vectors are random unit vectors (embedding 100k real chunks would take hours here).
   Queries are the evaluation's questions, embedded by the real model, so both the dense and
   the keyword half of `KnowledgeBase.search` run as in production. p50/p95 over the queries.
   At the largest size the same KB is also searched through an HNSW index.
3. Memory: the process's RSS after each size (it includes the embedding model and torch, as
   in a serving process), and the KB's size on disk.

Writes bench/storage_bench.png (latency and memory vs size).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_corpus import Corpus, write_corpus
from retrieval_questions import QUESTIONS

from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings
from kbqa.storage.embeddings import get_embedder
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.types import ChunkRecord, DocumentUpsert

BATCH = 1000  # chunks per synced document while growing the KB
_SENTENCE = re.compile(r"[^。！？.!?\n]+[。！？.!?]?")
PLOT = Path(__file__).resolve().parent / "storage_bench.png"


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_ingest(work: Path, corpus: Corpus, documents: int) -> list[str]:
    """End-to-end ingest of `documents` real documents (half English, half Chinese), then
    embedding alone; returns the chunk texts."""
    settings = load_settings(work / "ingest-home")
    get_embedder("default")  # load the model first: its load time is not throughput
    english = [f for f in corpus.files if f.startswith("en/")][: documents // 2]
    chinese = [f for f in corpus.files if f.startswith("zh/")][: documents - len(english)]
    files = [corpus.root / f for f in english + chinese]
    report = ingest_paths(settings, "ingest", files)
    with KnowledgeBase.open(settings.kbs_dir, "ingest") as kb:
        chunks = [c for d in kb.iter_documents_with_vectors() for c in d.chunks]
    texts = [c.text for c in chunks]
    sample = [c.embed_text for c in random.Random(0).sample(chunks, min(400, len(chunks)))]
    started = time.perf_counter()
    get_embedder("default").embed(sample)
    embed_s = time.perf_counter() - started
    print("| ingestion (real documents) | value |")
    print("|---|---|")
    print(f"| documents / chunks | {report.added} / {report.chunks} |")
    end_to_end = report.chunks / report.seconds
    print(f"| end to end (load, split, embed, store) | {end_to_end:.1f} chunks/s |")
    alone = len(sample) / embed_s
    print(f"| embedding alone ({len(sample)} of those chunks) | {alone:.1f} chunks/s |")
    print(f"| mean chunk length | {np.mean([len(t) for t in texts]):.0f} characters |\n")
    return texts


def synthetic_texts(pool: list[str], n: int, rng: random.Random) -> list[str]:
    sentences = [s.strip() for t in pool for s in _SENTENCE.findall(t) if len(s.strip()) > 8]
    return [" ".join(rng.sample(sentences, rng.randint(2, 5))) for _ in range(n)]


def grow(kb: KnowledgeBase, texts: list[str], start: int, rng: np.random.Generator) -> float:
    """Add texts[start:] with random unit vectors, BATCH per document; returns seconds."""
    started = time.perf_counter()
    for offset in range(start, len(texts), BATCH):
        batch = texts[offset : offset + BATCH]
        vectors = rng.normal(size=(len(batch), kb.info().dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        chunks = [ChunkRecord(t, None, None, i, t) for i, t in enumerate(batch)]
        path = f"/bench/doc{offset}.md"
        kb.sync(
            [DocumentUpsert(path, "/bench", path[7:], f"h{offset}", 0, 0.0, chunks, vectors)], []
        )
    return time.perf_counter() - started


def latencies(kb: KnowledgeBase, queries: list[tuple[np.ndarray, str]]) -> list[float]:
    kb.search(queries[0][0], queries[0][1], 5)  # warm: index load, SQLite cache
    times = []
    for vector, text in queries:
        started = time.perf_counter()
        kb.search(vector, text, 5)
        times.append(1000 * (time.perf_counter() - started))
    return times


def bench_search(
    work: Path, pool: list[str], sizes: list[int], hnsw: bool
) -> list[dict[str, float]]:
    texts = synthetic_texts(pool, max(sizes), random.Random(1))
    embedder = get_embedder("default")
    vectors = embedder.embed([q.text for q in QUESTIONS])
    queries = [(v, q.text) for v, q in zip(vectors, QUESTIONS, strict=True)] * 2  # 156 queries
    started = time.perf_counter()
    for _, text in queries[:50]:
        embedder.embed_query(text)
    embed_query_ms = 1000 * (time.perf_counter() - started) / 50
    rng = np.random.default_rng(2)
    kbs_dir = work / "search-kbs"
    rows: list[dict[str, float]] = []
    kb = KnowledgeBase.create(kbs_dir, "grow", embedding="default", dim=embedder.dim, index="flat")
    done = 0
    for size in sorted(sizes):
        add_s = grow(kb, texts[:size], done, rng)
        done = size
        times = latencies(kb, queries)
        rows.append(
            {
                "size": size,
                "p50": percentile(times, 50),
                "p95": percentile(times, 95),
                "rss": rss_mb(),
                "disk": disk_mb(kbs_dir / "grow"),
                "add_per_s": (size - (rows[-1]["size"] if rows else 0)) / add_s,
            }
        )
        print(f"measured {size}", file=sys.stderr)
    kb.close()
    print(
        "| chunks | index | search p50 ms | p95 ms | RSS MB | KB on disk MB | store rate chunks/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['size']} | flat | {row['p50']:.1f} | {row['p95']:.1f} | {row['rss']:.0f} "
            f"| {row['disk']:.0f} | {row['add_per_s']:.0f} |"
        )
    if hnsw:
        with KnowledgeBase.open(kbs_dir, "grow", index="hnsw") as approx:
            started = time.perf_counter()
            approx.search(queries[0][0], queries[0][1], 5)  # builds the HNSW index from SQLite
            build_s = time.perf_counter() - started
            times = latencies(approx, queries)
        print(
            f"| {max(sizes)} | hnsw (built in {build_s:.0f} s) | {percentile(times, 50):.1f} "
            f"| {percentile(times, 95):.1f} | {rss_mb():.0f} | {disk_mb(kbs_dir / 'grow'):.0f} | |"
        )
        rows.append(
            {
                "size": max(sizes),
                "hnsw_p50": percentile(times, 50),
                "hnsw_p95": percentile(times, 95),
            }
        )
    print(f"\nquery embedding alone: {embed_query_ms:.1f} ms per question")
    return rows


def plot(rows: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat = [r for r in rows if "p50" in r]
    sizes = [r["size"] for r in flat]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["p50"] for r in flat], "o-", label="p50 (flat)")
    left.plot(sizes, [r["p95"] for r in flat], "s--", label="p95 (flat)")
    for r in rows:
        if "hnsw_p50" in r:
            left.plot([r["size"]], [r["hnsw_p50"]], "^", label="p50 (HNSW)")
            left.plot([r["size"]], [r["hnsw_p95"]], "v", label="p95 (HNSW)")
    left.set(xscale="log", xlabel="chunks in the KB", ylabel="hybrid search latency (ms)")
    left.set_title("Search latency (dense + BM25, k=5)")
    left.legend()
    right.plot(sizes, [r["rss"] for r in flat], "o-", label="process RSS")
    right.plot(sizes, [r["disk"] for r in flat], "s--", label="KB on disk")
    right.set(xscale="log", xlabel="chunks in the KB", ylabel="MB")
    right.set_title("Memory and disk")
    right.legend()
    fig.suptitle("kbqa storage, 2-core CPU, 24 GB (random vectors, real-looking texts)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--no-hnsw", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--documents", type=int, default=40, help="real documents to ingest")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"load average {psutil.getloadavg()[0]:.1f} at start\n"
    )
    with tempfile.TemporaryDirectory(prefix="kbqa-storage-bench-") as tmp:
        work = Path(tmp)
        corpus = write_corpus(work / "docs")
        pool = bench_ingest(work, corpus, args.documents)
        rows = bench_search(work, pool, sizes, not args.no_hnsw)
    if not args.no_plot:
        plot(rows)
        print(f"plot: {PLOT.name}")
    print(f"load average {psutil.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
