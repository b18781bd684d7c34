"""Which answer is shown: the model's, or sentences quoted from the sources (`answer.mode`).

    extract   never call the model: the sentences that best match the question (one to
              three, best first, each followed by its [n]) under a label saying they are
              quoted from the documents
    generate  the model's answer, with evidence (kbqa.evidence)
    auto      extract at once where the model cannot be trusted with the question (the bundled
              small model and a question that is not English: it cannot read the language and
              echoes or invents); otherwise generate, then show the extract instead when the
              generated answer has no support in its sources (no sentence at
              answer.min_support) or names a URL or file name that none of its sources holds.
              The model's text is then kept as `generated`.

Tokens already streamed stay streamed; the final answer is the `done` event's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kbqa.answer import AnswerMode, Basis, Source
from kbqa.evidence import (
    EncoderFor,
    Ranked,
    Sentence,
    find_evidence,
    fold,
    question_parts,
    rank_for_questions,
    ranked_evidence,
    with_tail,
)
from kbqa.neighbours import Nearby
from kbqa.prompts import load_template
from kbqa.sentences import split_sentences
from kbqa.settings import AnswerSettings

REPLACED_NOTE = (
    "── 生成的回答没有文档依据，以下内容摘自文档 / "
    "the generated answer is not supported by the documents; quoted from them instead ──"
)
"""Put between a streamed answer and the quote that replaces it, where both are shown."""
MAX_QUOTES = 3
QUOTE_SHARE = 0.8
"""Further sentences are quoted when they score at least this share of the best one."""
PART_SHARE = 0.5
"""For a question that asks two things ("怎么开启？Windows 上能用吗？"), the best sentence for
each part is quoted when the whole question scores it at least this share of the best."""
NEARBY_SHARE = 0.9
"""A sentence of a chunk next to a source counts this share of its score: the source itself
wins a tie, as retrieval chose it."""

_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'`()\[\]{}（）【】，。；！？]+", re.IGNORECASE)
_EXTENSIONS = (
    "md|markdown|txt|rst|pdf|docx?|xlsx?|pptx?|csv|tsv|json|jsonl|ya?ml|toml|ini|cfg|conf|xml"
    "|html?|py|ipynb|js|ts|java|go|rs|c|h|cpp|hpp|sh|bat|ps1|exe|dll|so|zip|tar|gz|tgz|whl"
    "|png|jpe?g|gif|svg|log|sql|db|sqlite|bin|safetensors|gguf|onnx|pt|pth|ckpt"
)
_FILE = re.compile(rf"[\w.\-/\\]*[\w\-]\.(?:{_EXTENSIONS})(?![\w.\-/])", re.IGNORECASE)
_LINE_MARKER = re.compile(r"^\s*(?:[-*+•·>]+|\d{1,3}[.)、]|#{1,6})\s+", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """The answer to show, its sources with their evidence, and how it came about."""

    answer: str
    sources: list[Source]
    basis: Basis | None
    mode: AnswerMode
    generated: str | None = None
    """The model's text, where the shown answer replaced it."""


def extracts_first(mode: str, small_default: bool, lang: str) -> bool:
    """Whether to answer by extraction without calling the model at all."""
    return mode == "extract" or (mode == "auto" and small_default and lang != "en")


def extract(
    question: str,
    lang: str,
    sources: Sequence[Source],
    encoder_for: EncoderFor,
    ranked: Ranked | None = None,
    nearby: Nearby | None = None,
) -> Outcome:
    """The sentences of `sources` that best match `question` (`ranked`: already scored),
    quoted and cited; the answer is "" where the sources hold no sentence at all (text without
    a letter or digit).

    `nearby`: chunks next to the sources in their documents (kbqa.neighbours), whose sentences
    compete at NEARBY_SHARE of their score; one that is quoted joins the outcome's sources,
    numbered after them."""
    nearby = nearby or Nearby()
    parts = question_parts(question)
    if ranked is None:
        ranked, *by_part = _rank([question, *parts], sources, nearby, encoder_for)
    else:
        by_part = _rank(parts, sources, nearby, encoder_for) if parts else []
    # Markup is never quoted, so it is no evidence either: the top evidence sentence is the
    # first line of the answer.
    ranked = _words_only(ranked)
    chosen = _quotes(ranked, [_words_only(r) for r in by_part]) or _first_sentence(sources)
    if ranked and chosen[0] is ranked[0][0]:  # the best quote, with the tail that completes it
        chosen[0] = with_tail(chosen[0], [*sources, *nearby.sources][chosen[0].position], question)
        ranked[0] = (chosen[0], ranked[0][1])
        chosen[1:] = [s for s in chosen[1:] if not _overlap(s, chosen[0])]  # now in the tail
    sources, ranked, chosen = _with_quoted_neighbours(sources, nearby.sources, ranked, chosen)
    found = ranked_evidence(ranked, sources, floor=0.0)
    # Best first: the reader sees the best-supported sentence before the others.
    lines = [
        f"{_quote(s.shown or sources[s.position].text[s.start : s.end])} "
        f"[{sources[s.position].index}]"
        for s in chosen
    ]
    label = load_template(lang, name="extract").strip()
    answer = "\n".join([label, *lines]) if lines else ""
    return Outcome(answer, found.apply(sources), found.basis, "extracted")


def _rank(
    questions: Sequence[str], sources: Sequence[Source], nearby: Nearby, encoder_for: EncoderFor
) -> list[Ranked]:
    """The sentences of `sources` and then `nearby` (positions past the sources'), scored
    for each of `questions`."""
    candidates = [*sources, *nearby.sources]
    rankings = rank_for_questions(questions, candidates, encoder_for, nearby.leads)
    if not nearby.sources:
        return rankings
    own = len(sources)
    return [
        sorted(
            [(s, score * (NEARBY_SHARE if s.position >= own else 1.0)) for s, score in ranked],
            key=lambda item: item[1],
            reverse=True,
        )
        for ranked in rankings
    ]


def _words_only(ranked: Ranked) -> Ranked:
    return [(sentence, score) for sentence, score in ranked if not _markup(sentence.folded)]


def _with_quoted_neighbours(
    sources: Sequence[Source], nearby: Sequence[Source], ranked: Ranked, chosen: list[Sentence]
) -> tuple[list[Source], Ranked, list[Sentence]]:
    """The sources with the neighbours that `chosen` quotes appended (numbered on from the
    last source); `ranked` and `chosen` with positions into that list, other neighbours'
    sentences dropped."""
    own = len(sources)
    quoted = sorted({s.position for s in chosen if s.position >= own})
    moved = {position: own + i for i, position in enumerate(quoted)}
    first = max((s.index for s in sources), default=0) + 1
    joined = [*sources, *(replace(nearby[p - own], index=first + i) for i, p in enumerate(quoted))]

    def place(sentence: Sentence) -> Sentence:
        return replace(sentence, position=moved.get(sentence.position, sentence.position))

    kept = [(place(s), score) for s, score in ranked if s.position < own or s.position in moved]
    return joined, kept, [place(s) for s in chosen]


def review(
    question: str,
    lang: str,
    answer: str,
    sources: Sequence[Source],
    encoder_for: EncoderFor,
    settings: AnswerSettings,
    *,
    replaceable: bool,
) -> Outcome:
    """The generated `answer` with its evidence, or (auto mode, `replaceable`) the extract
    when the answer has no support or invents a reference."""
    found = find_evidence(answer, question, sources, encoder_for, settings.min_support)
    unsupported = found.basis != "answer" or bool(invented_references(answer, sources))
    if settings.mode == "auto" and replaceable and unsupported:
        extracted = extract(question, lang, sources, encoder_for, found.ranked)
        if extracted.answer:  # else nothing to quote: the model's answer is all there is
            return replace(extracted, generated=answer)
    return Outcome(answer, found.apply(sources), found.basis, "generated")


def invented_references(text: str, sources: Sequence[Source]) -> list[str]:
    """URLs and file names in `text` that occur in none of `sources` (texts or file names)."""
    known = fold("\n".join(part for s in sources for part in (s.source, s.heading or "", s.text)))
    invented: list[str] = []
    for match in _URL.finditer(text):
        url = match.group().rstrip(".,;:!?")
        bare = re.sub(r"^(?:https?://)?(?:www\.)?", "", fold(url)).rstrip("/")
        if bare not in known:
            invented.append(url)
    for match in _FILE.finditer(_URL.sub(" ", text)):
        name = fold(match.group()).replace("\\", "/").rsplit("/", 1)[-1]
        if name not in known:
            invented.append(match.group())
    return invented


def _quotes(ranked: Ranked, by_part: Sequence[Ranked] = ()) -> list[Sentence]:
    """The best sentence and up to two more within QUOTE_SHARE of it, best first; then, for
    a question that asks several things (`by_part`: the sentences ranked for each), the best
    sentence for each part not yet quoted, where the whole question scores it at PART_SHARE
    of the best or more. No ranking holds markup."""
    if not ranked or ranked[0][1] <= 0:
        return []
    floor = QUOTE_SHARE * ranked[0][1]
    chosen: list[Sentence] = []
    for sentence, score in ranked:
        if len(chosen) == MAX_QUOTES or score < floor:
            break
        if not any(_overlap(sentence, other) or _same(sentence, other) for other in chosen):
            chosen.append(sentence)
    whole = {(s.position, s.start, s.end): score for s, score in ranked}
    for part in by_part:
        if not part or len(chosen) == MAX_QUOTES:
            break
        best = part[0][0]
        if any(_overlap(best, other) or _same(best, other) for other in chosen):
            continue
        if whole.get((best.position, best.start, best.end), 0.0) >= PART_SHARE * ranked[0][1]:
            chosen.append(best)
    return chosen


def _first_sentence(sources: Sequence[Source]) -> list[Sentence]:
    """Nothing matched the question by its words: the start of the most relevant source (its
    first sentence that is not markup)."""
    for position, source in enumerate(sources):
        for start, end in split_sentences(source.text):
            sentence = Sentence.of(position, source.text, start, end)
            if not _markup(sentence.folded):
                return [sentence]
    return []


def _overlap(a: Sentence, b: Sentence) -> bool:
    return a.position == b.position and a.start < b.end and b.start < a.end


_TAG = re.compile(r"<[^<>]*>")
_LINK_TARGET = re.compile(r"\]\([^()\s]*\)|(?:https?://|www\.)\S+")
_WORDS = re.compile(r"[^\W_]")


def _markup(text: str) -> bool:
    """Mostly HTML tags and link targets (a README's banner of sponsor logos, a table written
    in HTML): less than a third of it is words once those are taken out. Quoted, it reads as
    noise, and its words are attribute values, not statements."""
    words = len(_WORDS.findall(_LINK_TARGET.sub("", _TAG.sub("", text))))
    return words < len(_WORDS.findall(text)) / 3


def _same(a: Sentence, b: Sentence) -> bool:
    """The same words in two places (a README's sentence repeated in three chunks, a twin
    file): quoted once, so that the other quotes can say something else."""
    return " ".join(a.folded.split()) == " ".join(b.folded.split())


def _quote(text: str) -> str:
    """A quoted span on one line: list markers dropped, white space runs made one space."""
    return " ".join(_LINE_MARKER.sub("", text).split())
