"""Evidence precision and the answer shown by `answer.mode`, on documents we did not write.

    .venv/bin/python bench/eval_evidence.py [--log FILE]

The corpus and questions are bench/eval_answers.py's (Debian's zh_CN manual pages of passwd,
package READMEs; bench/eval_questions.py). The default model generates once per answerable
question (answer.mode = generate); every mode is then replayed on those answers with
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


def replay(chain: Any, q: Question, generated: Answer, mode: str, min_support: float) -> Any:
    """What `mode` would show for the generated answer (kbqa.answer_mode, as the chain does)."""
    from kbqa.answer_mode import extract, extracts_first, review
    from kbqa.chain import _is_small_default
    from kbqa.prompting import detect_language

    lang = detect_language(q.question)
    sources = [replace(s, evidence=None) for s in generated.sources]
    if extracts_first(mode, _is_small_default(chain.chat_model), lang):
        return extract(q.question, lang, sources, chain._encoder)
    settings = AnswerSettings(mode=mode, min_support=min_support)  # type: ignore[arg-type]
    return review(
        q.question, lang, generated.answer, sources, chain._encoder, settings, replaceable=True
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--log", type=Path, help="write per-question results (JSON lines) here")
    args = parser.parse_args(argv)

    from ingest.pipeline import ingest_paths
    from kbqa.chain import QAChain
    from kbqa.evidence import find_evidence
    from kbqa.prompting import detect_language

    with tempfile.TemporaryDirectory(prefix="kbqa-evidence-") as tmp:
        overrides: dict[str, Any] = {
            "llm": {"max_new_tokens": args.max_new_tokens},
            "answer": {"mode": "generate"},
        }
        settings = load_settings(home=Path(tmp) / "home", overrides=overrides)
        pages = write_corpus(Path(tmp) / "docs")
        ingest_paths(settings, KB, [Path(tmp) / "docs"])
        chain = QAChain.from_settings(settings)
        chain.warm_up([KB])
        rows = []
        for q in [q for q in QUESTIONS if usable(q, pages) and q.kind != "unanswerable"]:
            generated = chain.ask(q.question, [KB], q.history)
            if generated.refused:
                rows.append({"id": q.id, "refused": True})
                continue
            found = find_evidence(generated.answer, q.question, generated.sources, chain._encoder)
            row: dict[str, Any] = {
                "id": q.id,
                "zh": detect_language(q.question) == "zh",
                "refused": False,
                "generated": generated.answer,
                "generated_ok": holds(generated.answer, q.answer),
                "support": round(found.support, 3),
                "fact_in_sources": any(holds(s.text, q.answer) for s in generated.sources),
                "modes": {},
            }
            for mode, threshold in [("auto", t) for t in THRESHOLDS] + [("extract", 0.0)]:
                shown = replay(chain, q, generated, mode, threshold)
                top = top_evidence(shown.sources)
                row["modes"][f"{mode}@{threshold}"] = {
                    "mode": shown.mode,
                    "answer_ok": holds(shown.answer, q.answer),
                    "top_ok": holds(top, q.answer),
                    "top": top,
                }
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
        if args.log is not None:
            args.log.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
        report(rows)


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
