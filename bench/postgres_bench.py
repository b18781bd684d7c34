"""SQLite files vs one shared PostgreSQL database (storage.database), on the same machine.

    .venv/bin/python bench/postgres_bench.py [--size 100000] [--eval-home DIR SETS...]

Starts a throw-away PostgreSQL cluster (Debian's binaries, as the tests do) and measures:

1. Store throughput: the same 100k chunks (texts as in bench/storage_bench.py, random unit
   vectors, 1,000 chunks per synced document) written into a SQLite KB and a PostgreSQL KB.
2. Search latency at that size: the evaluation's questions (embedded by the real model) through
   `KnowledgeBase.search`, k 5, alternating between the two KBs query by query so both see the
   same load on a shared machine. p50/p95.
3. Another host: a second home on the same database opens the KB (its FAISS cache is built from
   the vectors in PostgreSQL), then the first home commits one document; the time until the
   second home's next search returns it.
4. End to end ingest (load, split, embed, store) of the same real documents into each.
5. With --eval-home (a home holding the `zh-eval` KB of bench/eval_zh.py) and question sets:
   the KB copied into PostgreSQL by `kb migrate --to-database`, then hit@1/hit@5 of both.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_server import PostgresServer, find_binaries
from retrieval_corpus import write_corpus
from retrieval_questions import QUESTIONS
from storage_bench import grow, percentile, synthetic_texts

from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings
from kbqa.storage.embeddings import get_embedder
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.places import kbs_dir_with_database
from kbqa.storage.types import ChunkRecord, DocumentUpsert


def load() -> str:
    return f"{psutil.getloadavg()[0]:.1f}"


def store_and_search(work: Path, url: str, size: int) -> None:
    rng_texts = random.Random(1)
    pool_dir = write_corpus(work / "docs")
    pool = [
        (pool_dir.root / f).read_text(encoding="utf-8", errors="replace")
        for f in pool_dir.files[:60]
    ]
    texts = synthetic_texts(pool, size, rng_texts)
    embedder = get_embedder("default")
    vectors = embedder.embed([q.text for q in QUESTIONS])
    queries = [(v, q.text) for v, q in zip(vectors, QUESTIONS, strict=True)] * 2
    places = {
        "sqlite": work / "sqlite-kbs",
        "postgresql": kbs_dir_with_database(work / "pg-kbs", url),
    }
    kbs = {
        name: KnowledgeBase.create(kbs_dir, "grow", embedding="default", dim=embedder.dim)
        for name, kbs_dir in places.items()
    }
    print(f"| store {size} chunks | seconds | chunks/s | load at start |")
    print("|---|---|---|---|")
    for name, kb in kbs.items():
        started_load = load()
        seconds = grow(kb, texts, 0, np.random.default_rng(2))
        print(f"| {name} | {seconds:.0f} | {size / seconds:.0f} | {started_load} |")
    times: dict[str, list[float]] = {name: [] for name in kbs}
    for kb in kbs.values():
        kb.search(queries[0][0], queries[0][1], 5)  # warm: the index, the caches
    for vector, text in queries:
        for name, kb in kbs.items():
            started = time.perf_counter()
            kb.search(vector, text, 5)
            times[name].append(1000 * (time.perf_counter() - started))
    print(f"\n| search at {size} chunks ({len(queries)} queries) | p50 ms | p95 ms |")
    print("|---|---|---|")
    for name, measured in times.items():
        print(f"| {name} | {percentile(measured, 50):.1f} | {percentile(measured, 95):.1f} |")
    ratio = percentile(times["postgresql"], 95) / percentile(times["sqlite"], 95)
    print(f"\np95 PostgreSQL / SQLite: {ratio:.2f} (load {load()})\n")

    # Another host: a home of its own on the same database.
    other = kbs_dir_with_database(work / "host-b-kbs", url)
    with KnowledgeBase.open(other, "grow") as b:
        started = time.perf_counter()
        b.search(queries[0][0], queries[0][1], 5)
        first = time.perf_counter() - started
        vector = np.random.default_rng(3).normal(size=embedder.dim).astype(np.float32)
        vector /= np.linalg.norm(vector)
        chunk = ChunkRecord("lighthouse keeper", None, None, 0, "lighthouse keeper")
        doc = DocumentUpsert(
            "/bench/new.md", "/bench", "new.md", "n", 0, 0.0, [chunk], vector[None]
        )
        committed = time.perf_counter()
        kbs["postgresql"].sync([doc], [])
        commit_s = time.perf_counter() - committed
        hits = b.search(vector, "lighthouse keeper", 1)
        seen = time.perf_counter() - committed
        assert hits and hits[0].source == "new.md"
        started = time.perf_counter()
        b.search(vector, "lighthouse keeper", 1)
        again = time.perf_counter() - started
    print("| another host, same database | seconds |")
    print("|---|---|")
    print(f"| first search (FAISS cache built from {size} vectors in PostgreSQL) | {first:.2f} |")
    print(f"| commit of one document on the first host | {commit_s:.2f} |")
    print(f"| from that commit until the second host's search returns it | {seen:.2f} |")
    print(f"| the second host's next search | {again:.3f} |\n")
    for kb in kbs.values():
        kb.close()


def end_to_end(work: Path, url: str, documents: int) -> None:
    corpus = write_corpus(work / "docs")
    english = [f for f in corpus.files if f.startswith("en/")][: documents // 2]
    chinese = [f for f in corpus.files if f.startswith("zh/")][: documents - len(english)]
    files = [corpus.root / f for f in english + chinese]
    get_embedder("default")
    print(
        "| end to end ingest (load, split, embed, store) | documents | chunks | chunks/s | load |"
    )
    print("|---|---|---|---|---|")
    for name, database in (("sqlite", ""), ("postgresql", url), ("sqlite again", "")):
        home = work / f"ingest-{name.replace(' ', '-')}"
        settings = load_settings(home, overrides={"storage": {"database": database}})
        started_load = load()
        report = ingest_paths(settings, "ingest", files)
        rate = report.chunks / report.seconds
        print(f"| {name} | {report.added} | {report.chunks} | {rate:.1f} | {started_load} |")
    print()


def retrieval_quality(work: Path, url: str, eval_home: Path, sets: list[Path]) -> None:
    from eval_zh import KB, evaluate, load_questions

    from kbqa.kb_admin import migrate_kb

    home = work / "eval-home"
    shutil.copytree(eval_home / "kbs" / KB, home / "kbs" / KB)
    sqlite = load_settings(home)
    migrate_kb(sqlite, KB, KB, "faiss", url)
    shared = load_settings(home, overrides={"storage": {"database": url}})
    print("| question set | database | n | hit@1 | hit@5 |")
    print("|---|---|---|---|---|")
    for path in sets:
        questions = [q for q in load_questions(path) if q.get("sources")]
        for name, settings in (("sqlite", sqlite), ("postgresql", shared)):
            rows = evaluate(settings, questions)
            n = len(rows)
            hit1 = sum(r.source_rank == 1 for r in rows) / n
            hit5 = sum(r.source_rank is not None and r.source_rank <= 5 for r in rows) / n
            print(f"| {path.name} | {name} | {n} | {hit1:.3f} | {hit5:.3f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--documents", type=int, default=20, help="real documents to ingest")
    parser.add_argument("--eval-home", type=Path, help="a home holding bench/eval_zh.py's KB")
    parser.add_argument("sets", type=Path, nargs="*", help="question sets (with --eval-home)")
    args = parser.parse_args()
    bindir, why_not = find_binaries()
    if bindir is None:
        sys.exit(f"cannot run PostgreSQL here: {why_not}")
    print(
        f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"load average {load()} at start\n"
    )
    server = PostgresServer(bindir, fsync=True)
    try:
        server.start()
        with tempfile.TemporaryDirectory(prefix="kbqa-pg-bench-") as tmp:
            work = Path(tmp)
            store_and_search(work, server.create_database(), args.size)
            end_to_end(work, server.create_database(), args.documents)
            if args.eval_home:
                retrieval_quality(work, server.create_database(), args.eval_home, args.sets)
    finally:
        server.destroy()
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
