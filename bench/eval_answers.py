"""Answer quality of `kbqa ask` on documents we did not write (see bench/eval_questions.py).

    .venv/bin/python bench/eval_answers.py                    # full run with the default model
    .venv/bin/python bench/eval_answers.py --retrieval-only   # relevance calibration, no LLM

Reports, as a Markdown table to paste into bench/RESULTS.md:
- refusal precision (refused questions that were unanswerable) and recall (unanswerable
  questions that were refused);
- context recall: answerable questions whose sources hold the answer, and the share where
  source [1] does;
- citation rate (answers citing at least one [n] that exists) and citation correctness (of
  those, answers where a cited chunk holds the answer);
- answer correctness: the answer contains an expected fact (case-insensitive).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.eval_questions import MAN_PAGES, PACKAGES, QUESTIONS, Question
from bench.retrieval_corpus import MAN_DIR, package_readme, render_man_page
from kbqa.answer import Answer
from kbqa.settings import Settings, load_settings

KB = "eval"
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55)


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).lower()


def holds(text: str, needles: Sequence[str]) -> bool:
    haystack = norm(text)
    return any(norm(n) in haystack for n in needles)


def write_corpus(root: Path) -> set[str]:
    """The documents under `root`; returns the man pages found (questions on others skip)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        text = package_readme(name)
        if text:
            (root / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    pages = set()
    for page in MAN_PAGES:
        text = render_man_page(MAN_DIR / page) if (MAN_DIR / page).is_file() else None
        if text:
            stem = Path(page).name.removesuffix(".gz")
            (root / f"{stem}.md").write_text(text, encoding="utf-8")
            pages.add(stem.split(".")[0])
    return pages


def usable(q: Question, pages: set[str]) -> bool:
    needs_man = q.id.startswith(
        ("zh-passwd", "zh-groupadd", "zh-chage", "x-groupadd", "f-zh-passwd")
    )
    return not needs_man or {"passwd", "groupadd", "chage"} <= pages


def retrieval_only(settings: Settings, questions: list[Question]) -> None:
    from kbqa.prompting import retrieval_query
    from kbqa.relevance import relevance_of
    from kbqa.retrieval import Retriever

    retriever = Retriever(settings)
    rows = []
    for q in questions:
        history = [(a, b) for a, b in q.history]
        query = retrieval_query(history, q.question)
        hits = retriever.search(
            query, [KB], settings.retrieval.top_k, focus=q.question if history else None
        )
        top = relevance_of(hits[0]) if hits else 0.0
        rank = next((i for i, h in enumerate(hits, 1) if holds(h.text, q.evidence)), 0)
        rows.append((q, top, rank))
        print(f"{q.kind:12} {q.id:22} top relevance {top:.3f}  evidence at rank {rank or '-'}")
    answerable = [r for r in rows if r[0].kind != "unanswerable"]
    unanswerable = [r for r in rows if r[0].kind == "unanswerable"]
    print("\n| min_relevance | unanswerable refused | answerable refused |\n|---|---|---|")
    for t in THRESHOLDS:
        refused_u = sum(top < t for _, top, _ in unanswerable)
        refused_a = sum(top < t for _, top, _ in answerable)
        print(f"| {t} | {refused_u}/{len(unanswerable)} | {refused_a}/{len(answerable)} |")


def cited(answer: Answer) -> list[int]:
    indexes = {int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)}
    return sorted(i for i in indexes if 1 <= i <= len(answer.sources))


def evaluate(settings: Settings, questions: list[Question], log: Path | None) -> dict[str, Any]:
    from kbqa.chain import QAChain

    chain = QAChain.from_settings(settings)
    chain.warm_up([KB])
    results = []
    for q in questions:
        started = time.perf_counter()
        answer = chain.ask(q.question, [KB], q.history)
        seconds = time.perf_counter() - started
        sources = [s.text for s in answer.sources]
        marks = cited(answer)
        result = {
            "id": q.id,
            "kind": q.kind,
            "question": q.question,
            "answer": answer.answer,
            "refused": answer.refused,
            "sources": [f"[{s.index}] {s.source} {s.score:.2f}" for s in answer.sources],
            "context_hit": bool(q.evidence) and any(holds(t, q.evidence) for t in sources),
            "top_hit": bool(q.evidence and sources) and holds(sources[0], q.evidence),
            "cited": marks,
            "citation_ok": any(holds(sources[i - 1], q.evidence) for i in marks),
            "correct": bool(q.answer) and not answer.refused and holds(answer.answer, q.answer),
            "timings": answer.timings.to_json(),
            "seconds": round(seconds, 2),
        }
        results.append(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    if log is not None:
        log.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in results) + "\n")
    return summarise(results)


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "–"


def _zh(result: dict[str, Any]) -> bool:
    from kbqa.prompting import detect_language

    return detect_language(result["question"]) == "zh"


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    unanswerable = [r for r in results if r["kind"] == "unanswerable"]
    answerable = [r for r in results if r["kind"] != "unanswerable"]
    refused = [r for r in results if r["refused"]]
    answered = [r for r in answerable if not r["refused"]]
    citing = [r for r in answered if r["cited"]]
    generated = [r for r in results if not r["refused"]]
    plain = [r for r in answerable if r["kind"] == "answerable"]
    return {
        "questions": f"{len(answerable)} answerable ({len(answerable) - len(plain)} follow-ups), "
        f"{len(unanswerable)} unanswerable",
        "refusal precision": _share(
            sum(r["kind"] == "unanswerable" for r in refused), len(refused)
        ),
        "refusal recall": _share(sum(r["refused"] for r in unanswerable), len(unanswerable)),
        "answerable refused": _share(len(answerable) - len(answered), len(answerable)),
        "context holds the answer": _share(sum(r["context_hit"] for r in answered), len(answered)),
        "source [1] holds the answer": _share(sum(r["top_hit"] for r in answered), len(answered)),
        "answers citing a source": _share(len(citing), len(answered)),
        "citation correct (of citing)": _share(sum(r["citation_ok"] for r in citing), len(citing)),
        "answer correct": _share(sum(r["correct"] for r in answerable), len(answerable)),
        "answer correct, English questions": _share(
            sum(r["correct"] for r in answerable if not _zh(r)), sum(not _zh(r) for r in answerable)
        ),
        "answer correct, Chinese questions": _share(
            sum(r["correct"] for r in answerable if _zh(r)), sum(_zh(r) for r in answerable)
        ),
        "median first token (ms)": statistics.median(
            [r["timings"]["first_token_ms"] for r in generated] or [0]
        ),
        "median tokens/s": statistics.median(
            [r["timings"]["tokens_per_s"] for r in generated] or [0]
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrieval-only", action="store_true", help="no LLM: calibrate")
    parser.add_argument("--home", type=Path, help="KBQA home to use (default: a temporary one)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-relevance", type=float, help="override retrieval.min_relevance")
    parser.add_argument("--log", type=Path, help="write per-question results (JSON lines) here")
    args = parser.parse_args(argv)

    from kbqa.ingest.pipeline import ingest_paths

    with tempfile.TemporaryDirectory(prefix="kbqa-eval-") as tmp:
        home = args.home or Path(tmp) / "home"
        overrides: dict[str, Any] = {"llm": {"max_new_tokens": args.max_new_tokens}}
        if args.min_relevance is not None:
            overrides["retrieval"] = {"min_relevance": args.min_relevance}
        settings = load_settings(home=home, overrides=overrides)
        pages = write_corpus(Path(tmp) / "docs")
        report = ingest_paths(settings, KB, [Path(tmp) / "docs"])
        print(
            f"ingested {report.added + report.updated + report.unchanged} documents, "
            f"{report.chunks} chunks",
            file=sys.stderr,
        )
        questions = [q for q in QUESTIONS if usable(q, pages)]
        if args.retrieval_only:
            retrieval_only(settings, questions)
            return
        summary = evaluate(settings, questions, args.log)
        print(
            f"\nmin_relevance {settings.retrieval.min_relevance}, "
            f"max_new_tokens {args.max_new_tokens}\n\n| metric | value |\n|---|---|"
        )
        for key, value in summary.items():
            print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
