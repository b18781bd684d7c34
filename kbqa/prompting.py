"""From question, history and hits to the messages the model reads, within its token budget.

Budget order: the instructions and the question must fit (else the question is too long);
recent history may take up to a quarter of the budget (newest turns first, whole turns only);
the context gets the rest, most relevant chunk first, whole chunks only, except that the most
relevant chunk is cut to fit when even it alone is too long.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from kbqa.errors import InputTooLong, UsageError
from kbqa.prompts import fill
from kbqa.storage.types import SearchHit

TokenCounter = Callable[[str], int]
History = list[tuple[str, str]]

MESSAGE_OVERHEAD = 8
"""Tokens a chat format adds around each message (role markers, separators): an upper bound
for SmolLM2's and ChatGLM2's formats."""
HISTORY_SHARE = 4
"""History may use at most 1/HISTORY_SHARE of the prompt budget."""

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def remembering(count: TokenCounter, size: int = 4096) -> TokenCounter:
    """`count` with its last `size` answers kept: every question that retrieves a chunk has
    its passage counted again, with the same text (SentencePiece spends ~0.35 ms on one of
    ~400 tokens, so a 4-chunk context costs ~1.4 ms a request without this)."""
    return lru_cache(maxsize=size)(count)


def detect_language(text: str) -> str:
    """ "zh" when Chinese characters make up at least a third of the question's words, else "en".

    A Chinese character counts as one word, a run of Latin letters as one: "那 INT4 呢？" is zh,
    "What does 知识库 mean?" (3 against 3) is zh too, "How do I use jieba in Python?" is en.
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    return "zh" if cjk and cjk * 3 >= cjk + latin else "en"


def check_history(history: object) -> History:
    """`history` as (question, answer) pairs; UsageError unless it is [[str, str], ...]."""
    if history is None:
        return []
    if not isinstance(history, list | tuple):
        raise UsageError("history must be a list of [question, answer] pairs")
    pairs: History = []
    for i, turn in enumerate(history, start=1):
        if (
            not isinstance(turn, list | tuple)
            or len(turn) != 2
            or not all(isinstance(part, str) for part in turn)
        ):
            raise UsageError(f"history item {i} is not a [question, answer] pair of strings")
        pairs.append((turn[0], turn[1]))
    return pairs


def history_messages(history: History) -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    for question, answer in history:
        messages += [HumanMessage(question), AIMessage(answer)]
    return messages


def fit_history(history: History, max_turns: int, budget: int, count: TokenCounter) -> History:
    """The newest whole turns (at most `max_turns`) whose tokens fit in `budget`."""
    kept: History = []
    used = 0
    for question, answer in reversed(history[len(history) - max_turns :] if max_turns else []):
        cost = count(question) + count(answer) + 2 * MESSAGE_OVERHEAD
        if used + cost > budget:
            break
        kept.insert(0, (question, answer))
        used += cost
    return kept


def _label(hit: SearchHit) -> str:
    where = hit.source
    if hit.heading:
        where += f" › {hit.heading}"
    if hit.page is not None:
        where += f" (p. {hit.page})"
    return where


def format_passage(index: int, hit: SearchHit, text: str | None = None) -> str:
    return f"[{index}] {_label(hit)}\n{(text if text is not None else hit.text).strip()}"


def _cut_to_fit(text: str, budget: int, count: TokenCounter) -> str:
    """The longest prefix of `text` (in characters, found by bisection) within `budget` tokens."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def pack_context(
    hits: Sequence[SearchHit], budget: int, count: TokenCounter
) -> tuple[list[SearchHit], str]:
    """The hits that fit in `budget` tokens, in the given order, and their numbered passages.

    A hit that does not fit is skipped and later (shorter) ones are still tried, so the budget
    is used; the first hit is cut to fit rather than leaving the model with nothing.
    """
    packed: list[SearchHit] = []
    passages: list[str] = []
    used = 0
    for hit in hits:
        passage = format_passage(len(packed) + 1, hit)
        cost = count(passage) + 1  # the blank line between passages
        if used + cost > budget:
            if packed:
                continue
            header = count(format_passage(1, hit, "")) + 1
            text = _cut_to_fit(hit.text.strip(), budget - header, count)
            if not text:
                continue
            passage = format_passage(1, hit, text)
            cost = count(passage) + 1
        packed.append(hit)
        passages.append(passage)
        used += cost
    return packed, "\n\n".join(passages)


def qa_messages(template: str, context: str, question: str, history: History) -> list[BaseMessage]:
    prompt = fill(template, context=context, question=question)
    return [*history_messages(history), HumanMessage(prompt)]


def fixed_cost(template: str, question: str, count: TokenCounter) -> int:
    """Tokens of the prompt with an empty context: what every answer needs at least."""
    return count(fill(template, context="", question=question)) + MESSAGE_OVERHEAD


def check_fits(question: str, needed: int, budget: int) -> None:
    if needed >= budget:
        raise InputTooLong(
            f"the question is too long: with the instructions it needs {needed} tokens and the "
            f"model's prompt holds {budget}"
        )


def condense_input(history: History, question: str) -> str:
    """The conversation as the condense template's {history}."""
    lines = []
    for asked, answered in history:
        lines += [f"Q: {asked}", f"A: {answered}"]
    return "\n".join(lines)


def retrieval_query(history: History, question: str, turns: int = 2) -> str:
    """Without a model to rewrite follow-ups: the last questions asked, then this one.

    "那 INT4 呢？" alone names nothing to search for; after "Lumen-7B 在 FP16 下需要多少显存？"
    the joined query finds the chunk with the INT4 figure. Answers are left out: they are long
    and the model's own words, not the user's.
    """
    previous = [asked for asked, _ in history[-turns:]] if turns else []
    return "\n".join([*previous, question])
