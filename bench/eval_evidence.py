"""Evidence precision and the answer shown by `answer.mode`, on documents we did not write.

    .venv/bin/python bench/eval_evidence.py [--log FILE] [--home DIR]
    .venv/bin/python bench/eval_evidence.py --replay FILE     # score an earlier --log again
    .venv/bin/python bench/eval_evidence.py --set bench/eval_sets/zh_dev.jsonl --home H --kb K

With `--set`, the answerable Chinese questions of a `kbqa eval` question set (lines with
"facts", a question holding Chinese characters) are asked of KB K with the defaults, and only
aggregates are printed (no question text: a blind set stays blind): answered, shown answer
correct, and evidence precision both ways.

The corpus and questions are bench/eval_answers.py's (Debian's zh_CN manual pages of passwd,
package READMEs; bench/eval_questions.py). The default model generates once per answerable
English question (answer.mode = generate; auto mode quotes the documents for Chinese ones
without asking the bundled model); every mode is then replayed on those answers with
kbqa.answer_mode, so the modes and the support thresholds are compared on the same text.

Reports, as Markdown to paste into bench/RESULTS.md:
- for each min_support threshold: generated answers kept (correct / wrong) and, in auto mode,
  the shown answer containing the expected fact;
- evidence precision: the top evidence sentence (highest score over all sources) contains the
  expected fact, for correctly answered questions and for all answerable questions whose fact
  reached the sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.eval_answers import KB, holds, usable, write_corpus
from bench.eval_questions import QUESTIONS, Question
from kbqa.answer import Answer, Source
from kbqa.settings import AnswerSettings, load_settings

THRESHOLDS = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)


def top_evidence(sources: list[Source]) -> str:
    spans = [e for s in sources for e in s.evidence or ()]
    return max(spans, key=lambda e: e.score).text if spans else ""


def replay(chain: Any, q: Question, generated: Answer) -> dict[str, Any]:
    """What each mode and threshold would show for the generated answer: the support is
    measured once (kbqa.evidence), the quote made once (kbqa.answer_mode.extract)."""
    from kbqa.answer_mode import extract, extracts_first, invented_references
    from kbqa.chain import _is_small_default
    from kbqa.evidence import find_evidence
    from kbqa.prompting import detect_language

    lang = detect_language(q.question)
    sources = [replace(s, evidence=None) for s in generated.sources]
    found = find_evidence(generated.answer, q.question, sources, chain._encoder, 0.0)
    quoted = extract(q.question, lang, sources, chain._encoder, found.ranked)
    quote = {"answer_ok": holds(quoted.answer, q.answer), "top": top_evidence(quoted.sources)}
    kept = {
        "answer_ok": holds(generated.answer, q.answer),
        "top": top_evidence(found.apply(sources)),
    }
    first = extracts_first("auto", _is_small_default(chain.chat_model), lang)
    invented = bool(invented_references(generated.answer, sources))
    modes: dict[str, Any] = {"extract@0.0": {"mode": "extracted", **quote}}
    for t in THRESHOLDS:
        keep = not first and not invented and found.support >= t
        modes[f"auto@{t}"] = (
            {"mode": "generated", **kept} if keep else {"mode": "extracted", **quote}
        )
    for shown in modes.values():
        shown["top_ok"] = holds(shown["top"], q.answer)
    return {"support": round(found.support, 3), "invented": invented, "modes": modes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--log", type=Path, help="write per-question results (JSON lines) here")
    parser.add_argument("--home", type=Path, help="a KBQA home already holding the eval KB")
    parser.add_argument(
        "--replay", type=Path, help="an earlier --log: score its generated answers, generate none"
    )
    parser.add_argument("--set", type=Path, help="a kbqa eval question set (JSON lines)")
    parser.add_argument("--kb", default="zh-eval", help="the KB --set is asked of")
    parser.add_argument(
        "--misses",
        type=Path,
        help="with --set: write each question's outcome here (JSON lines: question, shown "
        "answer, top evidence); never for a blind set",
    )
    args = parser.parse_args(argv)
    if args.set is not None:
        print(json.dumps(evaluate_set(args.set, args.home, args.kb, args.misses)))
        return
    earlier: dict[str, str] = {}
    if args.replay is not None:
        for line in args.replay.read_text(encoding="utf-8").splitlines():
            logged = json.loads(line) if line.startswith("{") else {}
            if isinstance(logged.get("generated"), str) and not logged.get("zh"):
                earlier[logged["id"]] = logged["generated"]

    from kbqa.chain import QAChain
    from kbqa.ingest.pipeline import ingest_paths
    from kbqa.prompting import detect_language
    from kbqa.storage.kb import KnowledgeBase

    with tempfile.TemporaryDirectory(prefix="kbqa-evidence-") as tmp:
        overrides: dict[str, Any] = {
            "llm": {"max_new_tokens": args.max_new_tokens},
            "answer": {"mode": "generate"},
        }
        settings = load_settings(home=args.home or Path(tmp) / "home", overrides=overrides)
        pages = write_corpus(Path(tmp) / "docs")
        if KB not in KnowledgeBase.list_names(settings.kbs_dir):
            ingest_paths(settings, KB, [Path(tmp) / "docs"])
        chain = QAChain.from_settings(settings)
        chain.warm_up([KB])
        # auto mode never asks the bundled model a Chinese question: no need to generate one
        quoting = QAChain(
            settings.model_copy(update={"answer": AnswerSettings(mode="extract")}),
            chain.chat_model,
            chain.retriever,
        )
        rows = []
        for q in [q for q in QUESTIONS if usable(q, pages) and q.kind != "unanswerable"]:
            zh = detect_language(q.question) == "zh"
            if args.replay is not None and not zh:
                if q.id not in earlier:
                    continue
                found = quoting.ask(q.question, [KB], q.history)  # the same retrieval
                generated = Answer(earlier[q.id], found.refused, found.sources)
            else:
                generated = (quoting if zh else chain).ask(q.question, [KB], q.history)
            if generated.refused:
                rows.append({"id": q.id, "refused": True})
                continue
            row: dict[str, Any] = {
                "id": q.id,
                "zh": zh,
                "refused": False,
                "generated": generated.answer,
                "generated_ok": holds(generated.answer, q.answer),
                "fact_in_sources": any(holds(s.text, q.answer) for s in generated.sources),
                **replay(chain, q, generated),
            }
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
        if args.log is not None:
            args.log.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
        report(rows)


def chinese_answerable(path: Path) -> list[dict[str, Any]]:
    """The cases of a question set that have facts and a question in Chinese."""
    from kbqa.storage.keyword import has_cjk

    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [c for c in cases if c.get("facts") and has_cjk(c["question"])]


def evaluate_set(
    path: Path, home: Path | None, kb: str, misses: Path | None = None
) -> dict[str, Any]:
    """Aggregates of the answers shown with the defaults on `path`'s Chinese answerable cases;
    `misses`: where to write each case's outcome (for sets that may be read)."""
    from kbqa.chain import QAChain
    from kbqa.evaluation.metrics import contains_fact

    chain = QAChain.from_settings(load_settings(home=home))
    chain.warm_up([kb])
    answered = correct = top_of_correct = reached = top_of_reached = 0
    cases = chinese_answerable(path)
    outcomes: list[dict[str, Any]] = []
    for case in cases:
        answer = chain.ask(case["question"], [kb], case.get("history") or [])
        if answer.refused:
            outcomes.append({"id": case.get("id"), "question": case["question"], "refused": True})
            continue

        def has_facts(text: str, facts: list[str] = case["facts"]) -> bool:
            return all(contains_fact(text, fact) for fact in facts)

        top_ok = has_facts(top_evidence(answer.sources))
        answered += 1
        ok = has_facts(answer.answer)
        fact_reached = any(has_facts(s.text) for s in answer.sources)
        if ok:
            correct, top_of_correct = correct + 1, top_of_correct + top_ok
        if fact_reached:
            reached, top_of_reached = reached + 1, top_of_reached + top_ok
        outcomes.append(
            {
                "id": case.get("id"),
                "question": case["question"],
                "facts": case["facts"],
                "refused": False,
                "correct": ok,
                "top_ok": top_ok,
                "fact_in_sources": fact_reached,
                "answer": answer.answer,
                "top_evidence": top_evidence(answer.sources),
            }
        )
    if misses is not None:
        misses.write_text(
            "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outcomes), encoding="utf-8"
        )
    return {
        "questions": len(cases),
        "answered": answered,
        "correct": correct,
        "top_evidence_of_correct": top_of_correct,
        "fact_in_sources": reached,
        "top_evidence_of_fact_in_sources": top_of_reached,
    }


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f} %)" if whole else "–"


def report(rows: list[dict[str, Any]]) -> None:
    answered = [r for r in rows if not r["refused"]]
    english = [r for r in answered if not r["zh"]]
    good, bad = (
        [r for r in english if r["generated_ok"]],
        [r for r in english if not r["generated_ok"]],
    )
    reached = [r for r in answered if r["fact_in_sources"]]
    print(f"\n{len(rows)} answerable questions, {len(rows) - len(answered)} refused")
    print(
        "\n| setting | en generated kept: correct | kept: wrong | shown answer correct "
        "| zh | en | top evidence holds the fact: correct answers | fact in sources |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in [f"auto@{t}" for t in THRESHOLDS] + ["extract@0.0"]:

        def kept(group: list[dict[str, Any]], key: str = key) -> int:
            return sum(r["modes"][key]["mode"] == "generated" for r in group)

        right = [r for r in answered if r["modes"][key]["answer_ok"]]
        cells = [
            _share(kept(good), len(good)),
            _share(kept(bad), len(bad)),
            _share(len(right), len(answered)),
            _share(sum(r["zh"] for r in right), sum(r["zh"] for r in answered)),
            _share(len(right) - sum(r["zh"] for r in right), len(english)),
            _share(sum(r["modes"][key]["top_ok"] for r in right), len(right)),
            _share(sum(r["modes"][key]["top_ok"] for r in reached), len(reached)),
        ]
        print(f"| {key} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
