"""Retrieval quality with each embedding backend, and with KBs built by one backend and searched
by the other (embedding.backend may change while KBs stay).

    KBQA_BENCH_MIRRORS=/path/to/mirrors .venv/bin/python bench/embedding_backends.py \
        [--work DIR]

Two corpora, each ingested once per backend (PyTorch fp32, ONNX Runtime int8) with the
defaults otherwise, then searched through `Retriever.search` (as `kbqa ask` does) with queries
embedded by each backend: four combinations per corpus.
- Chinese: bench/eval_corpus_zh.py's corpus, questions of bench/eval_sets/zh_dev.jsonl and
  zh_heldout.jsonl, scored as bench/eval_zh.py does (source hit@5, fact hit@5, MRR@5).
- Mixed: bench/eval_retrieval.py's corpus (package READMEs, Chinese man pages) and its
  answerable questions, scored by its rule (the right file and the passage in the chunk).
The ingest of each corpus is timed too (chunks/s on real documents), unless `--reuse` gives
the PyTorch vectors of earlier eval runs (bench only: they are not computed again).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BACKENDS = ("torch", "onnx")
SETS = ("zh_dev.jsonl", "zh_heldout.jsonl")


def ingest(home: Path, kb: str, docs: Path, backend: str) -> tuple[Any, int, float]:
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.settings import load_settings

    settings = load_settings(home, overrides={"embedding": {"backend": backend}})
    if (settings.kbs_dir / kb).exists():
        return settings, 0, 0.0
    started = time.perf_counter()
    report = ingest_paths(settings, kb, [docs])
    return settings, report.chunks, time.perf_counter() - started


def queries_by(backend: str, cache_dir: Path) -> Callable[..., Any]:
    """kbqa.retrieval's get_embedder, with `backend` for the queries."""
    from kbqa.storage.embeddings import get_embedder

    def get(model: str, device: str = "cpu", batch_size: int = 32, *_: Any) -> Any:
        return get_embedder(model, device, batch_size, backend, cache_dir)

    return get


def zh_scores(settings: Any) -> dict[str, float]:
    from eval_zh import evaluate, load_questions

    root = Path(__file__).resolve().parent / "eval_sets"
    rows = [row for name in SETS for row in evaluate(settings, load_questions(root / name))]
    rows = [r for r in rows if r.q.get("sources")]  # answerable
    n = len(rows)
    return {
        "n": n,
        "hit@5": sum(r.source_rank is not None for r in rows) / n,
        "fact hit@5": sum(r.fact_rank is not None for r in rows) / n,
        "MRR@5": sum(1 / r.source_rank for r in rows if r.source_rank) / n,
    }


def mixed_scores(settings: Any) -> dict[str, float]:
    from eval_retrieval import is_hit
    from retrieval_questions import QUESTIONS

    from kbqa.retrieval import Retriever

    retriever = Retriever(settings)
    ranks = []
    for q in [q for q in QUESTIONS if q.kind != "none"]:
        hits = retriever.search(q.text, ["eval"], 5)
        rank = next((i for i, h in enumerate(hits, 1) if is_hit(q, h.source, h.text)), None)
        ranks.append(rank)
    n = len(ranks)
    return {
        "n": n,
        "hit@5": sum(r is not None for r in ranks) / n,
        "MRR@5": sum(1 / r for r in ranks if r) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep corpora and KBs here (reused)")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="vector caches of eval_zh.py / eval_retrieval.py --work runs (PyTorch vectors)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import eval_corpus_zh
    import retrieval_corpus
    from eval_retrieval import EmbeddingCache

    import kbqa.retrieval

    with tempfile.TemporaryDirectory(prefix="kbqa-backends-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Bench-only: PyTorch vectors of texts embedded by earlier runs are not computed again
        # (ONNX vectors are cached under keys of their own). No ingest time is printed then.
        cache = EmbeddingCache(work / "embeddings.npz")
        for path in args.reuse:
            cache.vectors.update(EmbeddingCache(path).vectors)
        cache.install()
        zh_docs, mixed_docs = work / "zh-docs", work / "mixed-docs"
        if not zh_docs.exists():
            eval_corpus_zh.write_corpus(zh_docs)
        if not mixed_docs.exists():
            retrieval_corpus.write_corpus(mixed_docs)
        print("| corpus | KB built by | queries by | n | hit@5 | fact hit@5 | MRR@5 |")
        print("|---|---|---|---|---|---|---|")
        for kb_backend in BACKENDS:
            built = {
                "Chinese (zh_dev + zh_heldout)": (
                    *ingest(work / f"zh-{kb_backend}", "zh-eval", zh_docs, kb_backend),
                    zh_scores,
                ),
                "mixed (eval_retrieval)": (
                    *ingest(work / f"mixed-{kb_backend}", "eval", mixed_docs, kb_backend),
                    mixed_scores,
                ),
            }
            cache.save()
            for corpus, (_, chunks, seconds, _) in built.items():
                if chunks and not args.reuse:
                    rate = chunks / seconds
                    print(f"<!-- {corpus}: {kb_backend} ingest {chunks} chunks {rate:.1f}/s -->")
            for query_backend in BACKENDS:
                original = kbqa.retrieval.get_embedder
                kbqa.retrieval.get_embedder = queries_by(query_backend, work / "cache")
                try:
                    for corpus, (settings, _, _, score) in built.items():
                        s = score(settings)
                        fact = f"{s['fact hit@5']:.3f}" if "fact hit@5" in s else "–"
                        print(
                            f"| {corpus} | {kb_backend} | {query_backend} | {s['n']} | "
                            f"{s['hit@5']:.3f} | {fact} | {s['MRR@5']:.3f} |",
                            flush=True,
                        )
                finally:
                    kbqa.retrieval.get_embedder = original


if __name__ == "__main__":
    main()
