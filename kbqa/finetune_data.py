"""Training pairs for `kbqa finetune`: JSON lines of question–answer pairs, or pairs built
from a knowledge base's retrieved context and the user's reference answers.

    {"prompt": "…", "response": "…", "history": [["earlier question", "earlier answer"]]}

(other column names, e.g. AdvertiseGen's {"content", "summary"}, via prompt_column and
response_column). A malformed line is reported with its number and skipped.

KB pairs put the retrieved passages into the same `qa` template the chain fills at answer
time, so the prefix learns the prompt it will be served; no LLM is needed to make them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kbqa.chatglm.train import Example
from kbqa.errors import UsageError
from kbqa.jsonlines import BadLine, json_objects, read_lines
from kbqa.prompting import check_history, detect_language, pack_context
from kbqa.prompts import TemplateError, fill, load_template
from kbqa.retrieval import Retriever
from kbqa.settings import Settings

MAX_FILE_BYTES = 256 * 1024 * 1024
ROUND_MARGIN = 16


def _text(item: dict[str, object], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f'"{key}" must be a non-empty string')
    return value


def _history(item: dict[str, object]) -> tuple[tuple[str, str], ...]:
    if item.get("history") is None:
        return ()
    return tuple((q, a) for q, a in check_history(item["history"]))


def read_pairs(
    path: Path, prompt_column: str = "prompt", response_column: str = "response"
) -> tuple[list[Example], list[BadLine]]:
    """The training pairs of a JSON-lines file; UsageError when it holds none."""
    objects, bad = json_objects(read_lines(path, "training file", MAX_FILE_BYTES))
    examples = []
    for number, item in objects:
        try:
            examples.append(
                Example(_text(item, prompt_column), _text(item, response_column), _history(item))
            )
        except UsageError as e:
            bad.append(BadLine(number, str(e)))
    if not examples:
        raise UsageError(_empty(path, "training pairs", bad))
    return examples, sorted(bad, key=lambda b: b.line)


@dataclass(frozen=True)
class Reference:
    question: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()


def read_references(path: Path) -> tuple[list[Reference], list[BadLine]]:
    """Questions with reference answers: `kbqa eval` lines carrying an "answer", or
    {"question", "answer"}; the evaluation-only fields (facts, sources, …) are ignored."""
    objects, bad = json_objects(read_lines(path, "questions file", MAX_FILE_BYTES))
    references = []
    for number, item in objects:
        try:
            references.append(
                Reference(_text(item, "question"), _text(item, "answer"), _history(item))
            )
        except UsageError as e:
            bad.append(BadLine(number, str(e)))
    if not references:
        raise UsageError(_empty(path, "questions with answers", bad))
    return references, sorted(bad, key=lambda b: b.line)


def _empty(path: Path, what: str, bad: list[BadLine]) -> str:
    detail = ""
    if bad:
        first = min(bad, key=lambda b: b.line)
        detail = f" ({len(bad)} malformed lines, the first: line {first.line}: {first.error})"
    return f"{path} holds no {what}{detail}"


@dataclass(frozen=True)
class KbPairs:
    examples: list[Example]
    no_context: list[str]  # questions the KB holds nothing relevant for (not trained on)


def pairs_from_kb(
    settings: Settings,
    kb: str,
    references: Sequence[Reference],
    count_tokens: Callable[[str], int],
    sample_tokens: int,
    top_k: int | None = None,
) -> KbPairs:
    """One pair per reference: the chain's `qa` prompt over the KB's relevant passages for
    the question, and the reference answer; the whole sample fits `sample_tokens`."""
    k = top_k or settings.retrieval.top_k
    examples, no_context = [], []
    with Retriever(settings) as retriever:
        retriever.check_names([kb])
        for ref in references:
            lang = detect_language(ref.question)
            override = settings.chain.prompt_zh if lang == "zh" else settings.chain.prompt_en
            try:
                template = load_template(lang, override, "qa")
            except TemplateError as e:
                raise UsageError(str(e)) from None
            hits = retriever.relevant(retriever.search(ref.question, [kb], k))
            # What the sample may hold beyond the template and the answer (and the round
            # markers, [gMASK] sop and </s>, which ROUND_MARGIN covers).
            fixed = count_tokens(fill(template, context="", question=ref.question))
            room = sample_tokens - fixed - count_tokens(ref.answer) - ROUND_MARGIN
            packed, context = pack_context(hits, room, count_tokens) if room > 0 else ([], "")
            if not packed:
                no_context.append(ref.question)
                continue
            prompt = fill(template, context=context, question=ref.question)
            examples.append(Example(prompt, ref.answer, ref.history))
    return KbPairs(examples, no_context)


def split_holdout(
    examples: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded shuffle; at least one of each when fraction > 0."""
    if not 0 <= fraction < 1:
        raise UsageError(f"the held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return list(examples), []
    if len(examples) < 2:
        raise UsageError("a held-out split needs at least 2 training pairs")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(fraction * len(examples))), len(examples) - 1)
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [examples[i] for i in kept], [examples[i] for i in held]
