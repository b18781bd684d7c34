"""Retrieval and refusal on the Chinese evaluation corpus, per language group, with the
bundled defaults (no per-KB calibration).

    .venv/bin/python bench/eval_zh.py --work /tmp/zh bench/eval_sets/zh_dev.jsonl
    .venv/bin/python bench/eval_zh.py --work /tmp/zh --misses bench/eval_sets/zh_heldout.jsonl

The corpus is written by bench/eval_corpus_zh.py into WORK/docs and ingested into a KB under
WORK/home (kept: later runs reuse it; --rebuild ingests again, e.g. after a splitter change).
Questions are the JSONL of `kbqa eval` (see bench/eval_sets/). Each goes through
`Retriever.search` as `kbqa ask` sends it (a follow-up as its earlier questions plus itself,
focused on itself); it counts as refused when the best relevance is below
`retrieval.min_relevance`, as the chain decides.

Hits: "source" = a result's source equals an expected source or ends with it (the `kbqa eval`
rule); "fact" = additionally that chunk contains one of the question's facts (stricter: the
passage that answers, not just the right file). MRR over the top 5.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval_corpus_zh import write_corpus
from eval_retrieval import EmbeddingCache

KB = "zh-eval"
K = 5


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).lower()


@dataclass
class Row:
    q: dict[str, Any]
    group: str
    top: float
    source_rank: int | None
    fact_rank: int | None
    results: list[tuple[str, float]]


def _is_zh(text: str) -> bool:
    from kbqa.storage.keyword import has_cjk

    return has_cjk(text)


def lang_of(q: dict[str, Any]) -> str:
    """The question's language: its `lang` field, else whether it holds Chinese."""
    return str(q.get("lang") or ("zh" if _is_zh(q["question"]) else "en"))


def group_of(q: dict[str, Any]) -> str:
    lang = lang_of(q)
    if q.get("unanswerable"):
        return f"unanswerable {lang}"
    # The first expected source says what the question is about; later ones are alternatives
    # (the same text in the other language's README, say).
    return f"{lang}→{q['sources'][0].split('/')[0]}"


def source_match(expected: Sequence[str], source: str) -> bool:
    return any(source == e or source.endswith("/" + e) or e.endswith(source) for e in expected)


def load_questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build(work: Path, rebuild: bool) -> Any:
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.settings import load_settings

    home = work / "home"
    if rebuild and home.exists():
        shutil.rmtree(home)
    settings = load_settings(home)
    if not (settings.kbs_dir / KB).exists():
        corpus = write_corpus(work / "docs")
        for line in corpus.missing:
            print(f"missing: {line}", file=sys.stderr)
        report = ingest_paths(settings, KB, [work / "docs"])
        print(f"ingested {len(corpus.files)} files, {report.chunks} chunks", file=sys.stderr)
        if report.failed:
            print(f"failed: {report.failed}", file=sys.stderr)
    return settings


def search_as_asked(retriever: Any, q: dict[str, Any], k: int) -> list[Any]:
    """The hits `kbqa ask` searches with for question record `q` (a follow-up as its earlier
    questions plus itself, focused on itself)."""
    from kbqa.prompting import retrieval_query

    history = [(a, b) for a, b in q.get("history", [])]
    query = retrieval_query(history, q["question"])
    return list(retriever.search(query, [KB], k, focus=q["question"] if history else None))


def evaluate(settings: Any, questions: list[dict[str, Any]]) -> list[Row]:
    from kbqa.relevance import relevance_of
    from kbqa.retrieval import Retriever

    retriever = Retriever(settings)
    rows = []
    for q in questions:
        hits = search_as_asked(retriever, q, K)
        expected = q.get("sources", [])
        facts = [norm(f) for f in q.get("facts", [])]
        source_rank = fact_rank = None
        for rank, hit in enumerate(hits, 1):
            if expected and source_match(expected, hit.source):
                source_rank = source_rank or rank
                if not facts or any(f in norm(hit.text) for f in facts):
                    fact_rank = fact_rank or rank
        top = relevance_of(hits[0]) if hits else 0.0
        results = [(h.source, relevance_of(h)) for h in hits]
        rows.append(Row(q, group_of(q), top, source_rank, fact_rank, results))
    return rows


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.2f}" if whole else "–"


def report(rows: list[Row], min_relevance: float, label: str) -> None:
    print(f"\n{label} (min_relevance {min_relevance})\n")
    print("| group | n | hit@1 | hit@3 | hit@5 | MRR | fact hit@1 | fact hit@5 | refused |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups = sorted({r.group for r in rows if not r.group.startswith("unanswerable")})
    answerable = [r for r in rows if not r.group.startswith("unanswerable")]
    for group in [*groups, "all answerable"]:
        rs = [r for r in answerable if group in (r.group, "all answerable")]
        n = len(rs)
        hit = {
            k: sum(r.source_rank is not None and r.source_rank <= k for r in rs) for k in (1, 3, 5)
        }
        fact = {k: sum(r.fact_rank is not None and r.fact_rank <= k for r in rs) for k in (1, 5)}
        mrr = sum(1 / r.source_rank for r in rs if r.source_rank) / n if n else 0.0
        refused = sum(r.top < min_relevance for r in rs)
        print(
            f"| {group} | {n} | {_ratio(hit[1], n)} | {_ratio(hit[3], n)} | {_ratio(hit[5], n)} "
            f"| {mrr:.2f} | {_ratio(fact[1], n)} | {_ratio(fact[5], n)} | {refused}/{n} |"
        )
    print("\n| language | unanswerable refused (recall) | refusal precision | answerable refused |")
    print("|---|---|---|---|")
    for lang in ("zh", "en", "all"):

        def of_lang(r: Row, lang: str = lang) -> bool:
            return lang in ("all", lang_of(r.q))

        un = [r for r in rows if r.group.startswith("unanswerable") and of_lang(r)]
        an = [r for r in answerable if of_lang(r)]
        refused_un = sum(r.top < min_relevance for r in un)
        refused_an = sum(r.top < min_relevance for r in an)
        precision = _ratio(refused_un, refused_un + refused_an)
        print(
            f"| {lang} | {refused_un}/{len(un)} ({_ratio(refused_un, len(un))}) | {precision} "
            f"| {refused_an}/{len(an)} ({_ratio(refused_an, len(an))}) |"
        )


def print_misses(rows: list[Row], min_relevance: float) -> None:
    print()
    for r in rows:
        unanswerable = r.group.startswith("unanswerable")
        wrong = (
            (r.top >= min_relevance)
            if unanswerable
            else (r.source_rank != 1 or r.fact_rank is None or r.top < min_relevance)
        )
        if wrong:
            got = ", ".join(f"{s} {v:.2f}" for s, v in r.results[:3])
            print(
                f"{r.q.get('id', '?'):14} {r.group:16} src@{r.source_rank or '-'} "
                f"fact@{r.fact_rank or '-'} top {r.top:.2f} | {r.q['question'][:50]} | {got}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sets", type=Path, nargs="+", help="question files (JSONL)")
    parser.add_argument("--work", type=Path, required=True, help="corpus, KB and vector cache")
    parser.add_argument("--rebuild", action="store_true", help="ingest the corpus again")
    parser.add_argument("--misses", action="store_true", help="list wrong questions")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(args.work / "embeddings.npz")
    cache.install()
    settings = build(args.work, args.rebuild)
    cache.save()
    for path in args.sets:
        rows = evaluate(settings, load_questions(path))
        report(rows, settings.retrieval.min_relevance, f"{path.name}: {len(rows)} questions")
        if args.misses:
            print_misses(rows, settings.retrieval.min_relevance)


if __name__ == "__main__":
    main()
