"""Sentence-level evidence, found by kbqa itself whatever the model: which sentences of the
sources support the answer, or, where nothing does, which best match the question.

    sources' texts ──► sentences (character spans, Chinese and English punctuation, lines)
    answer ──► claims (its sentences, citation marks and echoes of the question left out)
    score(claim, sentence) = ((1 - w) · lexical + w · dense) · keys · cited · on topic
    a claim's best sentence at ≥ min_support ──► evidence, basis "answer"
    no claim supported ──► the sentences that best match the question, basis "question"

- lexical: weighted share of the claim's terms found in the sentence. Terms as
  kbqa.relevance.query_terms finds them (NFKC, lower case, jieba words for Chinese, whole
  words and identifiers otherwise), English words cut to a crude stem (kbqa.stemming:
  weighs ~ weigh), plus the character pairs of Chinese terms of three or more characters
  (分词模式 ~ 三种分词模式), plus the keys below (command-line options such as `-d` are no
  words to jieba).
  What a claim adds to the question counts 0.8, the words it repeats from it 0.2: what the
  answer adds is what needs support, and an answer that only repeats the question (or numbers
  its list items "1. 1. 1.") makes no claim at all.
- dense: the cosine of the KB's own embeddings (one `embed` call for all the texts). `w` is
  0.4 for English; for Chinese text 0.3 with a Chinese-capable model and 0.1 with an
  English-only one such as the bundled MiniLM, whose cosines on Chinese are noise.
- keys: numbers, versions, command-line options and identifiers (INT4, chatglm2-6b) of the
  claim must occur in the sentence: the score is scaled by 0.2 + 0.8 · their found share, so
  "14 GB" is not supported by a sentence that says "5.5 GB".
- cited: a claim that cites [n] looks in source n first: sentences of other sources count
  0.85 of their score.
- on topic: a sentence whose own score for the question is under half the best sentence's
  supports in proportion: the small model copies passages that do not answer the question.

Offsets are Python string indices into the source's own text (kbqa.sentences).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from kbqa.answer import Basis, Evidence, Source
from kbqa.glossary import english_for
from kbqa.html_rows import html_rows
from kbqa.relevance import query_terms
from kbqa.sentences import is_table_row, split_sentences
from kbqa.stemming import stem
from kbqa.storage.keyword import has_cjk
from kbqa.storage.types import Vectors
from kbqa.value_kinds import missing_kinds

MIN_SUPPORT = 0.5
"""Default score a sentence needs to count as supporting a claim (answer.min_support)."""
CITED_ELSEWHERE = 0.85
ON_TOPIC = 0.5
QUESTION_SHARE = 0.6
"""Question evidence: sentences scoring at least this share of the best one (and QUESTION_FLOOR)."""
QUESTION_FLOOR = 0.15
PER_SOURCE = 3
CONTEXT_SHARE = 0.5
"""A question's term found only in a sentence's context (document path, heading, label line)
counts this share of its weight."""
ALIAS_SHARE = 0.8
"""A question's Chinese term found as one of its English words (kbqa.glossary) counts this
share of its weight."""


@dataclass(frozen=True)
class SentenceEncoder:
    """A KB's embedding model as evidence uses it: texts → [n, dim] unit rows."""

    embed: Callable[[list[str]], Vectors]
    reads_chinese: bool


EncoderFor = Callable[[str], SentenceEncoder | None]
"""The encoder of a KB by name; None = lexical scores only."""


# -- terms and keys ------------------------------------------------------------------------

_CITATION = re.compile(r"\[(\d{1,3})\]")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.:,]\d+)*(?![\w])")
_OPTION = re.compile(r"(?<![\w-])--?[a-z][\w-]*")
_IDENTIFIER = re.compile(r"(?<![\w.-])[a-z][\w]*(?:[.\-_][\w]+)+|(?<!\w)[a-z]+\d[\w]*")
_UPPER_WORD = re.compile(r"(?<!\w)[A-Z][A-Z0-9]+(?!\w)")
_LATIN_RUN = re.compile(r"[a-z0-9]+")
_SMALL_NUMBER = re.compile(r"\d{1,2}")
"""Alone, not a claim: such numbers also number list items and loops."""


def fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def terms(text: str) -> dict[str, float]:
    """Weighted terms of a question or a claim (see the module docstring)."""
    found: dict[str, float] = {}
    for term, weight in query_terms(text).items():
        if has_cjk(term):
            found[term] = float(weight)
            if len(term) >= 3:
                for i in range(len(term) - 1):
                    found.setdefault(term[i : i + 2], 0.5)
        else:
            found[term] = float(weight)
    for key in keys(text):  # "-d" in "passwd 的 -d 选项" is the word that matters most
        found.setdefault(key, 2.0)
    return found


def keys(text: str) -> frozenset[str]:
    """Numbers, options and identifiers (folded) that a supporting sentence must contain."""
    folded = fold(text)
    found = set(_NUMBER.findall(folded)) | set(_OPTION.findall(folded))
    found |= set(_IDENTIFIER.findall(folded))
    found |= {w.lower() for w in _UPPER_WORD.findall(unicodedata.normalize("NFKC", text))}
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Sentence:
    """A source sentence as the scorer searches it: `text[start:end]` of source `position`
    (its index in the list given), with the context it is read in (see `context_of`)."""

    position: int
    start: int
    end: int
    folded: str
    stems: frozenset[str]
    context: str = ""
    """Folded: the document's path, the chunk's heading and the label line above the sentence."""
    context_stems: frozenset[str] = frozenset()
    shown: str = ""
    """How the sentence reads where that is not `text[start:end]` itself: an HTML table row
    as "header: value; …" (kbqa.html_rows)."""

    @classmethod
    def of(
        cls, position: int, text: str, start: int, end: int, context: str = "", shown: str = ""
    ) -> Sentence:
        folded, around = fold(shown or text[start:end]), fold(context)
        return cls(position, start, end, folded, _stems(folded), around, _stems(around), shown)

    def has_term(self, term: str) -> bool:
        return _has_term(term, self.folded, self.stems)

    def has_key(self, key: str) -> bool:
        return _has_key(key, self.folded)

    def context_has_term(self, term: str) -> bool:
        return _has_term(term, self.context, self.context_stems)

    def context_has_key(self, key: str) -> bool:
        return _has_key(key, self.context)


def _stems(folded: str) -> frozenset[str]:
    return frozenset(map(stem, _LATIN_RUN.findall(folded)))


def _has_key(key: str, folded: str) -> bool:
    """`key` in `folded`, or, for a hyphenated name, its unhyphenated form (C-Eval ~ CEval)."""
    return _whole(key, folded) or ("-" in key and _whole(key.replace("-", ""), folded))


def _has_term(term: str, folded: str, stems: frozenset[str]) -> bool:
    if has_cjk(term) or not _LATIN_RUN.fullmatch(term):
        return _whole(term, folded)
    return stem(term) in stems


_LABEL = re.compile(
    r"\s*(?:-{1,2}[A-Za-z][\w-]*(?:[ ,=].*)?|#{1,6}\s.*|.{1,60}[:：]|\*\*[^*].{0,118}\*\*"
    r"|.{1,120}[?？])\s*"
)
"""A line that names what the lines under it are about: a command-line option ("-s,
--sha-rounds ROUNDS"), a Markdown heading, a short line ending in a colon, a line in bold
or a question (an FAQ's entry: "**Mac 上加载模型提示 `clang: error: …`**" is the label of the
answer under it)."""
_ASKING = re.compile(r".*[?？]|\*\*[^*].*\*\*")
ASKING_SHARE = 0.5
"""Score kept by a sentence that asks a question or is a line in bold: an FAQ entry's title
restates the question (it holds all its words) and answers nothing; the answer is under it."""
_UNDERLINE = re.compile(r"\s*(?:-{3,}|={3,})\s*")
LABEL_LINES = 8
"""How many lines above a sentence are searched for its label."""


def context_of(source: Source, start: int, end: int, lead: str = "", row: bool = False) -> str:
    """What a reader knows when reaching `source.text[start:end]`: the document's path, the
    chunk's heading and the label above it — for a table row, the table's caption (the line
    above its rows; the last line of `lead`, the chunk before, where the table opens the
    chunk); otherwise the nearest label line (an option's description under "-s,
    --sha-rounds ROUNDS"). The sentence itself need not repeat those names to be about them."""
    above = source.text[:start].splitlines()
    if row or is_table_row(source.text[start:end]):
        caption = next((ln.strip() for ln in reversed(lead.splitlines()) if _caption(ln)), "")
        label = next((ln.strip() for ln in reversed(above) if _caption(ln)), caption)
    else:
        label = _label(above[-LABEL_LINES - 1 :])
    return "\n".join(part for part in (source.source, source.heading or "", label) if part)


def _caption(line: str) -> bool:
    """Not a row, nor a line of HTML table markup ("<td>50.09</td>"): the text above a table."""
    return bool(line.strip()) and not is_table_row(line) and not line.lstrip().startswith("<")


def _label(lines: list[str]) -> str:
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        underlined = i + 1 < len(lines) and bool(_UNDERLINE.fullmatch(lines[i + 1]))
        if line.strip() and (underlined or _LABEL.fullmatch(line)):
            return line.strip()
    return ""


def _whole(needle: str, haystack: str) -> bool:
    """`needle` in `haystack`, not inside a longer word or number (any match for Chinese).
    Chinese characters around it are no part of it: "原版Qwen-7B" holds "qwen-7b"."""
    if has_cjk(needle):
        return needle in haystack
    # A word may end a hyphenated name ("hmm" in "--no-hmm"); a number or an option may not
    # ("7b" is no part of "qwen-7b", "-d" none of "--d").
    joins = "_" if needle.isalpha() and len(needle) >= 3 else "_-"
    at = haystack.find(needle)
    while at >= 0:
        before = haystack[at - 1] if at else " "
        after = haystack[at + len(needle)] if at + len(needle) < len(haystack) else " "
        if not (_latin(before) or before in joins) and not (_latin(after) or after == "_"):
            return True
        at = haystack.find(needle, at + 1)
    return False


def _latin(char: str) -> bool:
    """A letter or digit that would make a Latin word or number longer (not a Chinese one)."""
    return char.isalnum() and not has_cjk(char)


@dataclass(frozen=True)
class _Target:
    """A claim of the answer, or the question: what sentences are scored against."""

    text: str
    terms: dict[str, float]
    keys: frozenset[str]
    cites: frozenset[int]
    """Positions (0-based) of the sources it cites."""
    echo: frozenset[str] = frozenset()
    """A claim's terms that the question already holds."""
    reads_context: bool = False
    """The question: its terms count in a sentence's context too (CONTEXT_SHARE), its keys
    fully. A claim must be supported by the sentence's own words."""
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The question's Chinese terms' English words (kbqa.glossary), counting ALIAS_SHARE."""


def _claims(answer: str, question: str, count: int) -> list[_Target]:
    """The answer's sentences that say something beyond the question, with their citations."""
    asked = {stem(t) for t in terms(question)}
    claims: list[_Target] = []
    for start, end in split_sentences(answer):
        piece = answer[start:end]
        cites = frozenset(int(n) - 1 for n in _CITATION.findall(piece) if 1 <= int(n) <= count)
        text = _CITATION.sub(" ", piece).strip()
        said = terms(text)
        echo = frozenset(t for t in said if stem(t) in asked)
        if all(t in echo or _SMALL_NUMBER.fullmatch(t) for t in said):
            # An echo of the question, or list numbers ("1. 1. 1.") only: no claim. "[2]" on
            # its own after a sentence belongs to that sentence.
            if claims and cites:
                claims[-1] = replace(claims[-1], cites=claims[-1].cites | cites)
            continue
        claims.append(_Target(text, said, keys(text), cites, echo))
    return claims


# -- scoring ---------------------------------------------------------------------------------


def _lexical(target: _Target, sentence: Sentence) -> float:
    """Weighted share of the target's terms in the sentence; for a claim, what it adds to
    the question counts 0.8 and what it repeats 0.2 (a sentence that holds the question's
    words but not the claim's own does not support it)."""
    if target.reads_context:
        return _covered(target.terms, sentence, CONTEXT_SHARE, target.aliases)
    novel = {t: w for t, w in target.terms.items() if t not in target.echo}
    echo = {t: w for t, w in target.terms.items() if t in target.echo}
    if not novel or not echo:
        return _covered(target.terms, sentence)
    return 0.8 * _covered(novel, sentence) + 0.2 * _covered(echo, sentence)


def _covered(
    weights: dict[str, float],
    sentence: Sentence,
    in_context: float = 0.0,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> float:
    """Weighted share of `weights`' terms in the sentence; a term found through one of its
    `aliases` counts ALIAS_SHARE of its weight, one only in the context `in_context`."""
    total = sum(weights.values())
    if not total:
        return 0.0
    found = 0.0
    for term, weight in weights.items():
        found += weight * _match(term, sentence, in_context, (aliases or {}).get(term, ()))
    return found / total


def _match(term: str, sentence: Sentence, in_context: float, aliases: tuple[str, ...]) -> float:
    if sentence.has_term(term):
        return 1.0
    if any(sentence.has_term(alias) for alias in aliases):
        return ALIAS_SHARE
    if in_context and any(sentence.context_has_term(t) for t in (term, *aliases)):
        return in_context
    return 0.0


def _key_factor(target: _Target, sentence: Sentence) -> float:
    if not target.keys:
        return 1.0
    found = sum(
        sentence.has_key(k) or (target.reads_context and sentence.context_has_key(k))
        for k in target.keys
    )
    return 0.2 + 0.8 * found / len(target.keys)


def _dense_weight(target: _Target, sentence: Sentence, encoder: SentenceEncoder | None) -> float:
    if encoder is None:
        return 0.0
    if has_cjk(target.text) or has_cjk(sentence.folded):
        return 0.3 if encoder.reads_chinese else 0.1
    return 0.4


def _scores(
    targets: Sequence[_Target],
    sentences: Sequence[Sentence],
    texts: Sequence[str],
    sources: Sequence[Source],
    encoder_for: EncoderFor,
) -> np.ndarray:
    """[targets, sentences] scores in 0..1."""
    scores = np.zeros((len(targets), len(sentences)), dtype=np.float64)
    dense = _cosines(targets, sentences, texts, sources, encoder_for)
    encoders = {s.kb: encoder_for(s.kb) for s in sources}
    for j, sentence in enumerate(sentences):
        encoder = encoders[sources[sentence.position].kb]
        for i, target in enumerate(targets):
            w = _dense_weight(target, sentence, encoder)
            score = (1 - w) * _lexical(target, sentence) + w * max(float(dense[i, j]), 0.0)
            score *= _key_factor(target, sentence)
            if target.cites and sentence.position not in target.cites:
                score *= CITED_ELSEWHERE
            scores[i, j] = score
    return scores


def _cosines(
    targets: Sequence[_Target],
    sentences: Sequence[Sentence],
    texts: Sequence[str],
    sources: Sequence[Source],
    encoder_for: EncoderFor,
) -> np.ndarray:
    """[targets, sentences] cosines; 0 where a source's KB has no encoder. One `embed` call
    per distinct encoder among the sources' KBs (usually one)."""
    cosines = np.zeros((len(targets), len(sentences)), dtype=np.float64)
    encoders = {s.kb: encoder_for(s.kb) for s in sources}
    groups: dict[SentenceEncoder, list[int]] = {}
    for j, sentence in enumerate(sentences):
        encoder = encoders[sources[sentence.position].kb]
        if encoder is not None:
            groups.setdefault(encoder, []).append(j)
    for encoder, columns in groups.items():
        batch = [t.text for t in targets] + [texts[j] for j in columns]
        vectors = np.asarray(encoder.embed(batch), dtype=np.float64)  # [T + S, dim], unit rows
        cosines[:, columns] = vectors[: len(targets)] @ vectors[len(targets) :].T
    return cosines


def _sentences(
    sources: Sequence[Source], leads: Mapping[str, str]
) -> tuple[list[Sentence], list[str]]:
    """Every sentence of `sources`, in its context, each HTML table row one sentence read with
    its header; `leads`: by chunk id, the text of the chunk before it in its document, where
    known. Returns the sentences and the texts they read as (for the embedding)."""
    sentences: list[Sentence] = []
    texts: list[str] = []
    for position, source in enumerate(sources):
        lead = leads.get(source.chunk_id, "")
        rows = html_rows(source.text, lead)
        spans = [(s, e, "") for s, e in split_sentences(source.text)]
        if rows:
            spans = [
                (s, e, t) for s, e, t in spans if not any(s < r.end and r.start < e for r in rows)
            ]
            spans = sorted(spans + [(r.start, r.end, r.shown) for r in rows])
        for start, end, shown in spans:
            context = context_of(source, start, end, lead, row=bool(shown))
            sentences.append(Sentence.of(position, source.text, start, end, context, shown))
            texts.append(shown or source.text[start:end])
    return sentences, texts


# -- evidence --------------------------------------------------------------------------------


Ranked = list[tuple[Sentence, float]]
"""Sentences with their scores for the question, best first."""


@dataclass(frozen=True)
class Found:
    """Evidence for each source (in the order given) and what it was chosen for."""

    evidence: list[list[Evidence]]
    basis: Basis | None
    support: float = 0.0
    """The best claim's best score (0 when the answer has no claims): the answer's support."""
    ranked: Ranked = field(default_factory=list)
    """Every sentence scored for the question (see `rank_for_question`)."""

    def apply(self, sources: Sequence[Source]) -> list[Source]:
        """`sources` with their evidence set (best first)."""
        return [replace(s, evidence=tuple(e)) for s, e in zip(sources, self.evidence, strict=True)]


def find_evidence(
    answer: str,
    question: str,
    sources: Sequence[Source],
    encoder_for: EncoderFor,
    min_support: float = MIN_SUPPORT,
) -> Found:
    """Sentences of `sources` that support `answer`; where none reaches `min_support`, the
    sentences that best match `question` (basis "question"). The question and the answer's
    claims are scored in one pass (one `embed` call)."""
    sentences, texts = _sentences(sources, {})
    if not sentences:
        return Found([[] for _ in sources], None)
    claims = _claims(answer, question, len(sources))
    asked = _asked(question, sentences)
    scores = _scores([asked, *claims], sentences, texts, sources, encoder_for)
    ranked = _ranking(question, scores[0], sentences, texts, sources)
    # On topic too: a claim copied from a sentence that has nothing to do with the question
    # (the small model repeats passages) is not an answer. Sentences scoring under half the
    # best question score support in proportion.
    best = float(scores[0].max())
    if best > 0:
        scores[1:] *= np.minimum(1.0, scores[0] / (ON_TOPIC * best))
    support = float(scores[1:].max()) if claims else 0.0
    if support >= min_support:
        evidence = _answer_evidence(scores[1:], sentences, sources, min_support)
        return Found(evidence, "answer", support, ranked)
    return replace(ranked_evidence(ranked, sources), support=support)


def _answer_evidence(
    scores: np.ndarray, sentences: Sequence[Sentence], sources: Sequence[Source], floor: float
) -> list[list[Evidence]]:
    """Each claim's best sentence, and those within 0.05 of it, at `floor` or above."""
    best: dict[int, float] = {}
    for row in scores:
        top = float(row.max())
        for j in np.flatnonzero(row >= max(floor, top - 0.05)):
            best[int(j)] = max(best.get(int(j), 0.0), float(row[j]))
    return _by_source([(sentences[j], score) for j, score in best.items()], sources, "answer")


def ranked_evidence(
    ranked: Ranked, sources: Sequence[Source], floor: float = QUESTION_FLOOR
) -> Found:
    """Question evidence from a ranking: the best sentence and those within QUESTION_SHARE
    of it, at most PER_SOURCE a source, none under `floor` (0 where the sentences are quoted
    as the answer: what is shown is evidence, however weakly it matched)."""
    if not ranked or ranked[0][1] <= 0:
        return Found([[] for _ in sources], None, ranked=ranked)
    floor = max(floor, QUESTION_SHARE * ranked[0][1])
    kept = [(s, score) for s, score in ranked if score >= floor]
    return Found(_by_source(kept, sources, "question"), "question", ranked=ranked)


def rank_for_question(
    question: str,
    sources: Sequence[Source],
    encoder_for: EncoderFor,
    leads: Mapping[str, str] | None = None,
) -> Ranked:
    """Every sentence of `sources` with its score for `question`, best first. `leads`: by
    chunk id, the text of the chunk before it (a table's caption or header, kbqa.neighbours)."""
    return rank_for_questions([question], sources, encoder_for, leads)[0]


def rank_for_questions(
    questions: Sequence[str],
    sources: Sequence[Source],
    encoder_for: EncoderFor,
    leads: Mapping[str, str] | None = None,
) -> list[Ranked]:
    """`rank_for_question` for each of `questions` (a question and its parts, see
    `question_parts`) over the same sentences, with one `embed` call."""
    sentences, texts = _sentences(sources, leads or {})
    if not sentences:
        return [[] for _ in questions]
    targets = [_asked(question, sentences) for question in questions]
    rows = _scores(targets, sentences, texts, sources, encoder_for)
    return [
        _ranking(question, row, sentences, texts, sources)
        for question, row in zip(questions, rows, strict=True)
    ]


_PART = re.compile(r"[^?？]+[?？]")
MAX_PARTS = 3
_WORDS = re.compile(r"[^\W_]")


def question_parts(question: str) -> list[str]:
    """The questions of a question that asks several, each ending in its question mark
    ("jieba 的多进程并行分词怎么开启？Windows 上能用吗？"); [] for a question that asks one."""
    parts = [p.strip() for p in _PART.findall(question) if _WORDS.search(p)]
    # At most the first three: a quote holds three sentences, and each part is one more
    # scoring pass over every sentence (a pasted list of questions must not cost fifty).
    return parts[:MAX_PARTS] if len(parts) >= 2 else []


def _asked(question: str, sentences: Sequence[Sentence]) -> _Target:
    """The question as a target, its terms weighted by how rare they are among the sentences
    (BM25's idf): the topic's name ("jieba") is in most of them and tells them apart least.
    Names count as much as words here (query_terms doubles them for retrieval); a term in
    none weighs no more than the rarest one found."""
    weights = {term: min(weight, 1.0) for term, weight in terms(question).items()}
    aliases = {term: english_for(term) for term in weights if english_for(term)}
    n = len(sentences)
    found: list[float] = []
    for term in weights:
        df = sum(_match(term, s, 0.0, aliases.get(term, ())) > 0 for s in sentences)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        weights[term] *= idf
        if df:
            found.append(weights[term])
    cap = max(found, default=0.0)
    for term in weights:
        weights[term] = min(weights[term], cap) if cap else weights[term]
    return _Target(
        question, weights, keys(question), frozenset(), reads_context=True, aliases=aliases
    )


_DEFINITION = re.compile(
    r"^\s*(?:what\s+(?:is|are)\s+(?:an?\s+|the\s+)?(?P<en>.+?)"
    r"|(?P<zh>.+?)\s*(?:是什么|是啥|指什么)(?:东西)?)\s*[?？]?\s*$",
    re.IGNORECASE,
)
_DEFINES = re.compile(r"\s*(?:is|are|是|：|:)")
DEFINITION_BONUS = 0.3
"""Added to a sentence that starts "X is" for the question "what is X" / "X 是什么"."""
MISSING_KIND_SHARE = 0.4
"""Score kept by a sentence for each kind of value the question asks for (kbqa.value_kinds:
hours, a price, memory, a version…) that it holds none of: "显存要占多少" is answered by the
sentence with the GB figure, not by the one that introduces the table."""


_ASKS_FIGURE = re.compile(
    r"多少|几(?:个|位|种|倍|天|小时|秒|分钟|次|年)|多(?:大|长|高|快|久|重)"
    r"|\bhow (?:many|much|big|large|long|fast)\b"
)
NO_FIGURE_SHARE = 0.5
"""Score kept by a sentence without a number of its own (one the question does not already
hold) when the question asks "多少" / "how many": "生成 2000 个字符的平均速度对比如下" introduces
the answer; the table row after it, with 44.62, is the answer. "参数规模有多大" asks for a figure
too: "具有 62 亿参数", not "模型规模较小"."""


_ASKS_INSTALL = re.compile(
    r"装(?:哪个|哪些|什么)|安装(?:哪个|哪些|什么)|需要(?:额外)?安装|得先装|要先装"
    r"|\bwhich (?:package|library|dependency)\b|\bwhat (?:package|to install)\b|\binstall what\b"
)
_INSTALLS = re.compile(
    r"安装|\binstall|\b(?:pip3?|conda|npm|yarn|brew|cargo|apt(?:-get)?) (?:add|get)\b"
)
NO_INSTALL_SHARE = MISSING_KIND_SHARE
"""Score kept by a sentence that installs nothing (no "安装", "install", `pip install …`) when
the question asks what to install: "使用需安装 paddlepaddle-tiny，`pip install …==1.6.1`", not
"目前 paddle 模式支持 jieba v0.40 及以上版本", which shares more of its words."""


_ASKS_OPTION = re.compile(
    r"(?:哪|什么|几)[一两二三几]?[个种些项]?\s*(?:长|短)?(?:选项|参数|开关|标志|配置项|flag)"
    r"|\b(?:which|what) (?:command[- ]line )?(?:option|flag|switch|argument|parameter)s?\b"
)
_PARAMETER = re.compile(
    r"(?<![\w-])--?[a-z][\w-]*|(?<![\w.])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![\w.])|(?<![\w.])[a-z_]+="
)
"""A command-line option (-c, --lock-secs), a snake_case name (use_logn_attn), a keyword
argument (errors=): what a question asking "which option / 哪个参数" is answered with."""
NO_OPTION_SHARE = MISSING_KIND_SHARE
"""Score kept by a sentence that names no option or parameter (none the question does not
already hold, in the sentence or the option line it describes) when the question asks which
one: "训练时需要指定 `--history_column` 为…", not "如需要使用多轮对话数据…，可以提供聊天历史"."""


OPTION_NAMED_BONUS = 1.5
"""Asked which option does something, a sentence naming an option whose own name holds a word
of the question (`--no-hmm` for "关掉 HMM", `--lock-secs` for "锁定若干秒" through the glossary)
scores this much more than one naming some other option (`python -m jieba --help`)."""
_NAME_PART = re.compile(r"[a-z][a-z0-9]*")


def _asked_words(question: str) -> frozenset[str]:
    """The question's Latin words and the English words of its Chinese ones, stemmed."""
    found: set[str] = set()
    for term in terms(question):
        for word in (*_NAME_PART.findall(term), *english_for(term)):
            found.add(stem(word))
    return frozenset(w for w in found if len(w) >= 3)


def _names_asked(option: str, words: frozenset[str]) -> bool:
    """Whether a part of `option`'s name ("lock" and "secs" of --lock-secs) is among `words`."""
    return any(stem(part) in words for part in _NAME_PART.findall(option))


def _parameters(folded: str) -> frozenset[str]:
    return frozenset(p.rstrip("=") for p in _PARAMETER.findall(folded))


_FIGURE = re.compile(r"(?<![a-z\d.])\d+(?:[.,:]\d+)*")
"""A number, units glued on or not ("6gb", "7b"), but not the tail of a name ("int4", "bf16")."""


def _numbers(folded: str) -> frozenset[str]:
    return frozenset(_FIGURE.findall(folded))


def _ranking(
    question: str,
    row: np.ndarray,
    sentences: Sequence[Sentence],
    texts: Sequence[str],
    sources: Sequence[Source],
) -> Ranked:
    """Sentences by their question scores, a sentence ending in a colon joined with the (up to
    two) sentences it introduces; the sources' own relevance breaks near ties (0.1 of it).
    For "what is X", sentences that say what X is come first; a sentence without the kind of
    value asked for keeps MISSING_KIND_SHARE of its score."""
    match = _DEFINITION.match(fold(question))
    subject = (match.group("en") or match.group("zh")).strip() if match else ""
    figure = _numbers(fold(question)) if _ASKS_FIGURE.search(fold(question)) else None
    install = bool(_ASKS_INSTALL.search(fold(question)))
    options = _parameters(fold(question)) if _ASKS_OPTION.search(fold(question)) else None
    asked_words = _asked_words(question) if options is not None else frozenset()
    ranked = []
    for j, sentence in enumerate(sentences):
        source = sources[sentence.position]
        prior = 0.9 + 0.1 * source.score
        quoted = _with_list(sentences, j, texts, source.text)
        if options is not None:
            quoted = _with_option_line(quoted, source.text)
        folded = sentence.folded
        held = folded if quoted is sentence else fold(source.text[quoted.start : quoted.end])
        score = float(row[j]) * prior * MISSING_KIND_SHARE ** missing_kinds(question, held)
        if figure is not None and not (_numbers(held) - figure):
            score *= NO_FIGURE_SHARE
        if install and not _INSTALLS.search(held):
            score *= NO_INSTALL_SHARE
        if options is not None:
            named = _parameters(held) - options
            if not named:
                score *= NO_OPTION_SHARE
            elif any(_names_asked(option, asked_words) for option in named):
                score *= OPTION_NAMED_BONUS
        if quoted is sentence and _ASKING.fullmatch(texts[j]):
            score *= ASKING_SHARE

        if subject and folded.startswith(subject) and _DEFINES.match(folded, len(subject)):
            score += DEFINITION_BONUS
        ranked.append((quoted, score))
    ranked.sort(key=lambda item: item[1], reverse=True)
    return ranked


TAIL_CHARS = 40
"""A sentence this short that ends the paragraph of the best quote is quoted with it when it
holds a word of the question that neither the quote nor its context holds: "其中
`dataset_info.json` 文件应放置在 `dataset_dir` 目录下。您可以通过修改 `dataset_dir` 参数来使用其他
目录。默认值为 `./data`。" answers "默认放在哪个目录"."""


def with_tail(quoted: Sentence, source: Source, question: str) -> Sentence:
    """`quoted` (a sentence of `source`, or its extension) up to the end of a short sentence
    that follows it in its paragraph, at most two sentences on, holding a term of `question`
    that `quoted` and its context lack; else `quoted` itself."""
    if quoted.shown:
        return quoted  # an HTML table row: its cells are its own
    lacking = [
        t
        for t in terms(question)
        if not (has_cjk(t) and len(t) < 2)
        and not quoted.has_term(t)
        and not quoted.context_has_term(t)
    ]
    text = source.text
    following = [(s, e) for s, e in split_sentences(text) if s >= quoted.end][:2]
    end = quoted.end
    for start, stop in following:
        if "\n\n" in text[end:start]:
            break  # the paragraph ended
        end = stop
        after = Sentence.of(quoted.position, text, start, stop)
        if stop - start <= TAIL_CHARS and any(after.has_term(t) for t in lacking):
            return replace(quoted, end=stop)
    return quoted


_ANNOUNCES = re.compile(
    r"(?:如下|下述|下列|(?:以下|下面)的?(?:方法|方式|步骤|命令|代码|示例|设置|配置))[^。！？]{0,12}[。.]?$"
    r"|\b(?:as follows|the following)\b[^.]{0,30}[.]?$",
    re.IGNORECASE,
)
"""A sentence that announces what follows without a colon ("可以通过下述方法使用魔搭社区。",
"生成 2000 个字符的平均速度对比如下")."""
_FENCE = re.compile(r"\s*```[^\n]*\n")
CODE_BLOCK_CHARS = 400
"""A code block introduced by a colon is quoted whole up to this length."""


def _with_list(sentences: Sequence[Sentence], j: int, texts: Sequence[str], text: str) -> Sentence:
    """Sentence j, extended over the next two sentences of its source when it ends in a
    colon or otherwise announces them ("支持三种分词模式：" says nothing without the modes
    that follow, "可以通过下述方法使用魔搭社区。" without the method), or over the code
    block it introduces ("需要指定 `evaluate.sh` 中的参数：" and the block's option lines).
    `text`: the sentence's source text."""
    sentence = sentences[j]
    if not texts[j].endswith((":", "：")) and not _ANNOUNCES.search(texts[j]):
        return sentence
    following: list[Sentence] = []
    for k in range(j + 1, min(j + 3, len(sentences))):
        if sentences[k].position != sentence.position or _ASKING.fullmatch(texts[k]):
            break  # another source, or the next FAQ entry's title
        following.append(sentences[k])
    if not following:
        return sentence
    end = following[-1].end
    fence = None if sentence.shown else _FENCE.match(text, sentence.end)
    if fence is not None:  # the whole block, closing fence included
        close = text.find("```", fence.end())
        if 0 <= close - fence.end() <= CODE_BLOCK_CHARS:
            end = max(end, close + 3)
        elif close < 0 and len(text) - fence.end() <= CODE_BLOCK_CHARS:
            end = len(text.rstrip())  # the chunk ends inside the block
    return replace(sentence, end=end)


_OPTION_LINE = re.compile(r"[ \t]*-{1,2}[A-Za-z][\w-]*(?:[ ,=][^\n]*)?\n")


def _with_option_line(sentence: Sentence, text: str) -> Sentence:
    """`sentence` from the option line it describes, where it sits in that option's
    paragraph ("-c, --create\\n默认情况下…。此选项强制 mandb 删除以前的数据库…"): asked which
    option does something, the quote must show the option, not only what it does."""
    start = text.rfind("\n\n", 0, sentence.start) + 1  # the paragraph (0 when none before)
    line = _OPTION_LINE.match(text, start + (text[start : start + 1] == "\n"))
    if line is None or line.end() > sentence.start or sentence.start - line.start() > 400:
        return sentence
    return replace(sentence, start=line.start() + len(line.group()) - len(line.group().lstrip()))


def _by_source(
    scored: Sequence[tuple[Sentence, float]], sources: Sequence[Source], basis: Basis
) -> list[list[Evidence]]:
    """Evidence per source, best first, at most PER_SOURCE each, overlapping spans merged away."""
    evidence: list[list[Evidence]] = [[] for _ in sources]
    for sentence, score in sorted(scored, key=lambda item: item[1], reverse=True):
        kept = evidence[sentence.position]
        if len(kept) >= PER_SOURCE or any(
            e.start < sentence.end and sentence.start < e.end for e in kept
        ):
            continue
        text = sources[sentence.position].text[sentence.start : sentence.end]
        kept.append(Evidence(sentence.start, sentence.end, text, min(max(score, 0.0), 1.0), basis))
    return evidence
