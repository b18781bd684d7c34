"""Retrieval quality of kbqa against a plain LangChain pipeline, on documents we did not write.

    .venv/bin/python bench/eval_retrieval.py                 # quality: kbqa vs LangChain
    .venv/bin/python bench/eval_retrieval.py --sweep 400:250,600:350   # chunk sizes (en:zh)

HNSW recall against exact search is bench/hnsw_recall.py.

The documents (bench/retrieval_corpus.py) are read from installed packages into a temporary
folder; the questions are bench/retrieval_questions.py. kbqa goes through the real pipeline:
`ingest_paths` into a temporary KB, then `Retriever.search` (hybrid dense + BM25 fusion,
title-enhanced chunks, relevance ordering). The baseline is what a LangChain tutorial builds:
RecursiveCharacterTextSplitter (400 or 600 characters, overlap 50) + langchain_community's
FAISS + the same embedding model, through a thin `Embeddings` adapter. All see the same files
and questions.

Metrics over answerable questions: hit@k (a hit in the top k), MRR over the top 5, and
"coverage" (some chunk of that system holds the expected passage at all). Over unanswerable
ones: AUROC of the top-1 score separating answerable from unanswerable questions, and for
kbqa the share refused at `retrieval.min_relevance`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_corpus import Corpus, write_corpus
from retrieval_questions import QUESTIONS, Question

K = 5
Result = tuple[str, str, float]
"""(source, text, score) of one retrieved chunk."""
Search = Callable[[str, int], list[Result]]
_EMPHASIS = re.compile(r"[*`]")
_WHITESPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _WHITESPACE.sub(" ", _EMPHASIS.sub("", text)).lower().strip()


def is_hit(question: Question, source: str, text: str) -> bool:
    stem = PurePosixPath(source).name.removesuffix(".md")
    return stem == question.source and normalise(question.passage) in normalise(text)


@dataclass
class Scores:
    name: str
    ranks: dict[str, int | None]
    """Question id → rank (1-based) of the first hit in the top K, None when missed."""
    top: dict[str, float]
    """Question id → score of the top result (0 when nothing came back)."""
    covered: int
    build_s: float
    query_ms: float
    chunks: int


def evaluate(
    name: str, search: Search, chunk_texts: Sequence[tuple[str, str]], build_s: float
) -> Scores:
    ranks: dict[str, int | None] = {}
    top: dict[str, float] = {}
    started = time.perf_counter()
    for question in QUESTIONS:
        results = search(question.text, K)
        top[question.id] = results[0][2] if results else 0.0
        if question.kind != "none":
            found = [i for i, (s, t, _) in enumerate(results, 1) if is_hit(question, s, t)]
            ranks[question.id] = found[0] if found else None
    query_ms = 1000 * (time.perf_counter() - started) / len(QUESTIONS)
    covered = sum(
        any(is_hit(q, s, t) for s, t in chunk_texts) for q in QUESTIONS if q.kind != "none"
    )
    return Scores(name, ranks, top, covered, build_s, query_ms, len(chunk_texts))


def summary(scores: Scores, kinds: Sequence[str]) -> dict[str, float]:
    ranks = [r for q in QUESTIONS if q.kind in kinds for r in [scores.ranks[q.id]]]
    n = len(ranks)
    return {
        "n": n,
        **{f"hit@{k}": sum(r is not None and r <= k for r in ranks) / n for k in (1, 3, 5)},
        "mrr": sum(1 / r for r in ranks if r is not None) / n,
    }


def auroc(scores: Scores) -> float:
    """P(top score of an answerable question > that of an unanswerable one); ties count half."""
    pos = [scores.top[q.id] for q in QUESTIONS if q.kind != "none"]
    neg = [scores.top[q.id] for q in QUESTIONS if q.kind == "none"]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


class EmbeddingCache:
    """Bench-only reuse of vectors across runs that share `--work`: texts embedded before (by
    any system or chunk-size configuration) are not embedded again. Build times of a run that
    reused vectors are not throughput numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        self.reused = self.embedded = 0
        if path.is_file():
            with np.load(path) as stored:
                self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))

    def install(self) -> None:
        from kbqa.storage.embeddings import Embedder

        original = Embedder.embed
        cache = self

        def embed(embedder: Embedder, texts: list[str], **options: Any) -> np.ndarray:
            # PyTorch's vectors keep the keys of caches written before there were backends.
            tag = "" if getattr(embedder, "backend", "torch") == "torch" else embedder.backend
            keys = [hashlib.sha1((tag + t).encode()).hexdigest() for t in texts]
            missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache.vectors}
            if missing:
                fresh = original(embedder, list(missing.values()), **options)
                cache.vectors.update(zip(missing, fresh, strict=True))
            cache.embedded += len(missing)
            cache.reused += len(texts) - len(missing)
            if not texts:
                return original(embedder, texts)
            return np.stack([cache.vectors[k] for k in keys])

        Embedder.embed = embed  # type: ignore[method-assign,assignment]

    def save(self) -> None:
        keys = np.array(list(self.vectors), dtype="U40")
        np.savez(self.path, keys=keys, vectors=np.stack(list(self.vectors.values())))


# -- the systems ---------------------------------------------------------------------------


def build_kbqa(home: Path, corpus: Corpus, sizes: tuple[int, int] | None = None) -> Search:
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.relevance import relevance_of
    from kbqa.retrieval import Retriever
    from kbqa.settings import load_settings

    overrides = {}
    if sizes is not None:
        overrides = {"ingest": {"chunk_size": sizes[0], "chunk_size_zh": sizes[1]}}
    settings = load_settings(home, overrides=overrides)
    report = ingest_paths(settings, "eval", [corpus.root])
    if report.failed:
        raise SystemExit(f"ingest failed: {report.failed}")
    retriever = Retriever(settings)

    def search(query: str, k: int) -> list[Result]:
        return [(h.source, h.text, relevance_of(h)) for h in retriever.search(query, ["eval"], k)]

    return search


def kb_chunks(home: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    from kbqa.settings import load_settings
    from kbqa.storage.kb import KnowledgeBase

    texts: list[tuple[str, str]] = []
    vectors = []
    with KnowledgeBase.open(load_settings(home).kbs_dir, "eval") as kb:
        for doc in kb.iter_documents_with_vectors():
            texts += [(doc.source, c.text) for c in doc.chunks]
            vectors.append(doc.vectors)
    return texts, np.concatenate(vectors)


def storage_variants(home: Path) -> dict[str, Search]:
    """Ablations on the same KB: dense only, keyword only, storage fusion (no relevance sort)."""
    from kbqa.settings import load_settings
    from kbqa.storage.embeddings import get_embedder
    from kbqa.storage.kb import KnowledgeBase

    kb = KnowledgeBase.open(load_settings(home).kbs_dir, "eval")
    embedder = get_embedder("default")

    def variant(dense_weight: float | None = None, keyword_weight: float = 1.0) -> Search:
        def search(query: str, k: int) -> list[Result]:
            vector = embedder.embed_query(query)
            hits = kb.search(
                vector, query, k, dense_weight=dense_weight, keyword_weight=keyword_weight
            )
            return [(h.source, h.text, h.score) for h in hits]

        return search

    return {
        "dense only": variant(keyword_weight=0.0, dense_weight=1.0),
        "BM25 only": variant(dense_weight=0.0),
        "fusion (storage order)": variant(),
    }


def build_langchain(corpus: Corpus, size: int) -> tuple[Search, list[tuple[str, str]]]:
    # langchain_community announces its sunset, and LangChain warns whenever its FAISS
    # wrapper's euclidean "relevance" falls below 0 (it does for unrelated chunks).
    warnings.filterwarnings("ignore", message=".*langchain-community. is being sunset")
    warnings.filterwarnings("ignore", message="Relevance scores must be between 0 and 1")
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from kbqa.storage.embeddings import get_embedder

    embedder = get_embedder("default")

    class Adapter(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed_query(text).tolist()

    documents = [
        Document((corpus.root / f).read_text(encoding="utf-8"), metadata={"source": f})
        for f in corpus.files
    ]
    splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=50)
    chunks = splitter.split_documents(documents)
    store = FAISS.from_documents(chunks, Adapter())

    def search(query: str, k: int) -> list[Result]:
        found = store.similarity_search_with_relevance_scores(query, k=k)
        return [(d.metadata["source"], d.page_content, float(s)) for d, s in found]

    return search, [(c.metadata["source"], c.page_content) for c in chunks]


# -- reports -------------------------------------------------------------------------------

_GROUPS = (
    ("all answerable", ("zh", "x", "en")),
    ("zh→zh", ("zh",)),
    ("zh→en docs", ("x",)),
    ("en", ("en",)),
)


def print_table(all_scores: Sequence[Scores]) -> None:
    print("| system | questions | n | hit@1 | hit@3 | hit@5 | MRR |")
    print("|---|---|---|---|---|---|---|")
    for scores in all_scores:
        for label, kinds in _GROUPS:
            s = summary(scores, kinds)
            print(
                f"| {scores.name} | {label} | {s['n']} | {s['hit@1']:.2f} | {s['hit@3']:.2f} "
                f"| {s['hit@5']:.2f} | {s['mrr']:.2f} |"
            )
    print()
    print("| system | chunks | passages covered | AUROC (answerable vs not) | build s | query ms |")
    print("|---|---|---|---|---|---|")
    answerable = sum(q.kind != "none" for q in QUESTIONS)
    for sc in all_scores:
        print(
            f"| {sc.name} | {sc.chunks} | {sc.covered}/{answerable} | {auroc(sc):.2f} "
            f"| {sc.build_s:.0f} | {sc.query_ms:.0f} |"
        )


def print_misses(scores: Scores) -> None:
    missed = [q.id for q in QUESTIONS if q.kind != "none" and scores.ranks[q.id] is None]
    print(f"\n{scores.name} misses ({len(missed)}): {', '.join(missed) or '-'}")


def print_refusals(scores: Scores, min_relevance: float) -> None:
    refused_none = [q for q in QUESTIONS if q.kind == "none" and scores.top[q.id] < min_relevance]
    refused_ok = [q for q in QUESTIONS if q.kind != "none" and scores.top[q.id] < min_relevance]
    n_none = sum(q.kind == "none" for q in QUESTIONS)
    print(
        f"\n{scores.name} at min_relevance {min_relevance}: refuses {len(refused_none)}/{n_none} "
        f"unanswerable and {len(refused_ok)}/{len(QUESTIONS) - n_none} answerable questions"
    )


def run_quality(work: Path, corpus: Corpus) -> None:
    from kbqa.settings import load_settings

    started = time.perf_counter()
    kbqa = build_kbqa(work / "home", corpus)
    kbqa_build = time.perf_counter() - started
    texts, _ = kb_chunks(work / "home")
    results = [evaluate("kbqa", kbqa, texts, kbqa_build)]
    for name, variant in storage_variants(work / "home").items():
        results.append(evaluate(f"kbqa {name}", variant, texts, kbqa_build))
    for size in (400, 600):
        started = time.perf_counter()
        baseline, baseline_texts = build_langchain(corpus, size)
        build_s = time.perf_counter() - started
        results.append(evaluate(f"LangChain {size}/50", baseline, baseline_texts, build_s))
    print_table(results)
    for scores in (results[0], results[-1]):
        print_misses(scores)
    print_refusals(results[0], load_settings(work / "home").retrieval.min_relevance)


def run_sweep(work: Path, corpus: Corpus, configs: list[tuple[int, int]]) -> None:
    results = []
    for en, zh in configs:
        home = work / f"home-{en}-{zh}"
        started = time.perf_counter()
        search = build_kbqa(home, corpus, (en, zh))
        texts, _ = kb_chunks(home)
        results.append(
            evaluate(f"kbqa en {en} / zh {zh}", search, texts, time.perf_counter() - started)
        )
        print(f"done en {en} / zh {zh}", file=sys.stderr)
    print_table(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", help="chunk sizes to compare, e.g. 400:250,600:350 (en:zh)")
    parser.add_argument("--work", help="keep KBs and embeddings here and reuse them next time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbqa-eval-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = EmbeddingCache(work / "embeddings.npz") if args.work else None
        if cache is not None:
            cache.install()
        corpus = write_corpus(work / "docs")
        print(
            f"corpus: {len(corpus.files)} documents "
            f"({sum(f.startswith('zh/') for f in corpus.files)} Chinese man pages); "
            f"missing: {', '.join(corpus.missing) or 'none'}; "
            f"{sum(q.kind != 'none' for q in QUESTIONS)} answerable + "
            f"{sum(q.kind == 'none' for q in QUESTIONS)} unanswerable questions\n"
        )
        if args.sweep:
            configs = [tuple(int(n) for n in c.split(":")) for c in args.sweep.split(",")]
            run_sweep(work, corpus, [(c[0], c[1]) for c in configs])
        else:
            run_quality(work, corpus)
        if cache is not None:
            cache.save()
            print(f"\nembedding cache: {cache.reused} vectors reused, {cache.embedded} embedded")


if __name__ == "__main__":
    main()
