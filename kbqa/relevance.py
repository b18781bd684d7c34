"""The 0..1 relevance that decides which retrieved chunks reach the model.

    relevance = max(dense_weight * dense, lexical) * the factors below (1 where one does not apply)

- `dense` is the hit's score from storage: the cosine between the question's and the chunk's
  embeddings, clipped to 0..1 (or a reranker's score where one is configured).
- `dense_weight` is 1, except 0.5 for a question containing Chinese (or Japanese) characters
  searched with an embedding whose name does not mark it as Chinese-capable
  (kbqa.storage.fusion.reads_chinese), such as the bundled all-MiniLM-L6-v2: it is English-only, and
  on such questions its cosines are noise (off-topic Chinese questions reach ~0.47 on a
  Chinese README, answerable ones score no higher).
- `lexical` is the weighted share of the question's terms that occur in the chunk (its text,
  heading and file name): sum of the weights of the terms found / sum of all the weights.

Terms: the question is NFKC-folded and lower-cased; Chinese runs are segmented with jieba and
other text is split into words (`int4`, `chatglm2-6b`, `450.80.02` stay whole). Function and
question words (的, 什么, 多少, how, what, …) are dropped. A lone Chinese character is usually a
function word, but jieba also splits real words into characters (年假 → 年 假), so adjacent
lone characters are joined back into one term and a lone one left over is dropped. Terms with
a Latin letter or a digit (names, versions, identifiers: `INT4`, `Harbor`) weigh 2, others 1:
they are rarer and say more about what is asked. A Latin word also matches its plural; a
Chinese term of three or more characters that does not occur whole earns the share of its
character pairs that do (繁体中文 against 繁体分词: 1 of 3). A Latin name is the same with or
without its `-`, `.`, `_` (C-Eval and CEval, Q-LoRA and QLoRA).

A Chinese question against a chunk with no Chinese in it (an English README, a PDF) can only
match there by its Latin terms: its share is that of its Latin terms alone, at most
CROSS_LANGUAGE_SHARE (0.5; see `_cross_language_share`).

Numbers: a term with a digit (4090, INT4, Qwen-72B, F1, 2016) names exactly what is asked; a
chunk that lacks it rarely answers (it is how "ChatGLM2-6B 在 RTX 4090 上每秒生成多少 token" and
"jieba 的 F1 值" pass on chunks about the same model and tool). Each one missing keeps 0.8 of
the relevance (MISSING_NUMBER_FACTOR); for a follow-up, only the new question's numbers count.

The value asked, in its passage: a question that asks for a kind of value — a duration, a
price, a rate, an amount of memory, a percentage, a ratio, a date, a version, a GPU model, a
processor, a person, or failing those any figure (how many, the maximum, 多少个) — is answered
by a sentence that holds such a value together with what the question asks about
(kbqa.value_kinds). `value_passage` finds the passages of VALUE_WINDOW sentences (the value's
and one either side, with the chunk's path and heading) that hold a value of an asked kind and
keeps the share of the question's terms found in the best of them over their share in the
whole chunk, at least MISSING_KIND_FACTOR (0.4); a chunk holding no such value at all keeps
MISSING_KIND_FACTOR, below `min_relevance` on its own. "训练 ChatGLM-6B 一共花了多少 GPU 小时"
shares every content word with a chunk of ChatGLM-6B's README that gives no hours; "In which
tiktoken release was o200k_base introduced?" meets a README with versions in it, none of them
in the sentences about o200k_base. The lexical share and the English-only embedding say "same
topic"; where the value sits says "no answer". It replaced a chunk-level rule (a kind missing
from the chunk and from its document's other candidates) and, unlike the rules before it,
moved the question sets written after them too (bench/RESULTS.md, "Fourth round"); English
questions about the right product that ask for no kind of value still pass on the cosine.

Neighbours: for a Chinese question, a hit is also scored joined with the chunk before it and
with the chunk after it in its document (kbqa.retrieval reads them), and keeps the best of the
three. Chinese chunks are short (`ingest.chunk_size_zh` 250), and a question often meets half
of its answer in each of two chunks: the model and batch size in one, the memory table in the
next; a FAQ entry's question in one and its answer in the next. Alone, neither holds the
question's numbers and names together and each was refused. English chunks are longer and an
English question leans on the cosine, which a neighbour does not change: joined, they only let
other documents outrank.

Named documents: a Latin term of the question that names one of the candidate documents by
its path (jieba for jieba/README.md, faiss for faiss-cpu.md) must occur in a chunk, or it keeps
MISSING_NUMBER_FACTOR, as a missing number does (kbqa.named_documents): "Which GPU was used to
benchmark jieba's segmentation speed?" is not answered from Qwen's benchmark table.

Names asked about: a name of the question (kbqa.question_names: QUIC, HanLP, Daphne, 日语)
that no candidate chunk of the hit's document holds keeps ABSENT_NAME_FACTOR (0.5) of the
relevance: "Does HTTPX support HTTP/3 over QUIC?" shares all its other terms with httpx's
README, which never says QUIC. A Latin name matches in any of its forms (P-Tune, P-Tuning).

Identifiers of a Chinese question: a command-line option is a term as written (`-G`,
`--append`), and a Chinese question with two Latin terms or more scores a chunk with Chinese
text at least as it would score it without (CROSS_LANGUAGE_SHARE × the share of its Latin
terms): a half-translated man page whose chunk holds `usermod` and `-G` but none of the user's
own Chinese words is the answer, not noise.

Identifiers together: a Chinese question's Latin terms (two or more: names, versions,
numbers, options) that no passage of SCATTER_WINDOW sentences of the chunk holds all together
(with the chunk's path and heading) keep SCATTERED_FACTOR (0.8) of the relevance
(`scattered`). "ChatGLM2-6B-32K 在 INT4 量化下推理最低需要多少显存？" meets ChatGLM2-6B's
README, which names ChatGLM2-6B-32K in its news and INT4 in its memory table, never in one
passage: a question made of parts the document holds apart is rarely answered there.
English questions are left out: all their words are Latin, and a paraphrase spreads them
(measured: it refused as many answerable English questions as unanswerable ones).

A follow-up searched as "earlier questions + new question" (see kbqa.prompting) scores the
lexical share only for chunks holding at least one term of the new question itself (see
`lexical_score`), so changing the subject is not answered from the previous topic's chunks.

With `retrieval.min_relevance` = 0.45 on real documents (bench/eval_answers.py, results in
bench/RESULTS.md) no answerable question was refused and off-topic ones were; questions on the
documents' topics that the documents do not answer still often pass, and are left to the model.
Measured on Chinese and English projects' docs (bench/eval_zh.py, "Chinese retrieval and
refusal" in bench/RESULTS.md); weighting terms by their IDF in the KB was tried there and lost
(paraphrased words the KB never uses weigh most and sink answerable questions).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache

from kbqa.question_names import question_names
from kbqa.sentences import split_sentences
from kbqa.stemming import stem
from kbqa.storage.fusion import reads_chinese
from kbqa.storage.keyword import STOPWORDS, has_cjk
from kbqa.storage.types import SearchHit
from kbqa.value_kinds import asked_kinds

CJK_DENSE_WEIGHT = 0.5
CROSS_LANGUAGE_SHARE = 0.5
"""Most a Chinese question's lexical share can reach on a chunk without Chinese text."""
MISSING_NUMBER_FACTOR = 0.8
"""Relevance kept for each number, version or sized name of the question the chunk lacks."""
MISSING_KIND_FACTOR = 0.4
"""Relevance kept for each kind of value the question asks for that the chunk holds none of."""

MIN_IDENTIFIERS = 2
"""Latin terms (names, options, numbers) a Chinese question needs for them alone to score a
chunk with Chinese text, as they score one without (see `lexical_score`)."""
SCATTERED_FACTOR = 0.8
"""Relevance kept by a chunk whose passages hold a Chinese question's identifiers only apart."""
SCATTER_WINDOW = 5
"""Sentences of a passage (`scattered`): the sentence, two before and two after it."""
VALUE_WINDOW = 3
"""Sentences of a passage that holds the value asked (`value_passage`): the sentence with the
value and one either side."""
ABSENT_NAME_FACTOR = 0.5
"""Relevance kept for each name of the question (kbqa.question_names) that no candidate chunk
of the hit's document holds."""

RELEVANCE = "relevance"
"""Key of the relevance in SearchHit.extra once `with_relevance` has scored a hit."""

# Question and filler words that say nothing about the topic (beyond storage's stop words).
_FILLER_WORDS = (
    # Chinese question words, modal verbs and politeness.
    "多少 几 哪 哪里 哪儿 哪个 哪些 哪几种 怎么样 怎样 什么样 是否 是不是 能否 能不能 "
    "可以 可不可以 有没有 要 需要 吗 呢 吧 么 请 告诉 一下 知道 情况 问题 "
    # Hedges and pointers that questions add and documents do not say (几 多少 asked another way).
    "最少 至少 多大 大概 大约 这个 那个 哪天 一共 "
    # English ones.
    "much many long when where why there any some about tell please know get use used using "
    "should would will shall may might must need needs roughly approximately often"
)
_FILLER = frozenset(_FILLER_WORDS.split())
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+(?:[._\-+][^\W_]+)*")
_ASCII_ALNUM = re.compile(r"[a-z0-9]")
_DIGIT = re.compile(r"[0-9]")
_OPTION = re.compile(r"(?<![\w-])--?[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
"""A command-line option (-G, --append): a name as exact as a number (see `query_terms`)."""
_LATIN_CHAR = r"[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
"""A letter or digit of a word that is not Chinese (or Japanese): what a Latin word ends at."""
_RUN = re.compile(r"[^\W_]+")
"""A run of letters and digits: what the whole-word test in `_occurs` treats as one word."""


def _segment(run: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.ERROR)
    words = [w for w in jieba.cut(run) if w.strip()]
    terms: list[str] = []
    singles = ""
    for word in [*words, ""]:  # "" flushes the last run of single characters
        if len(word) == 1 and word not in STOPWORDS and word not in _FILLER:
            singles += word
            continue
        if len(singles) > 1:
            terms.append(singles)
        singles = ""
        if len(word) > 1:
            terms.append(word)
    return terms


@lru_cache(maxsize=256)
def query_terms(question: str) -> dict[str, int]:
    """The question's distinct terms and their weights (see the module docstring)."""
    text = unicodedata.normalize("NFKC", question).lower()
    found: list[str] = []
    position = 0
    for match in _CJK_RUN.finditer(text):
        found += _latin_terms(text[position : match.start()])
        found += _segment(match.group())
        position = match.end()
    found += _latin_terms(text[position:])
    terms: dict[str, int] = {}
    for term in found:
        if term in STOPWORDS or term in _FILLER or (len(term) == 1 and not term.isdigit()):
            continue
        terms[term] = 2 if _ASCII_ALNUM.search(term) else 1
    return terms


def _latin_terms(text: str) -> list[str]:
    # An option keeps its dashes: "usermod -G" asks about -G, whose lone letter would be
    # dropped as a word; man pages list options as "-G, --groups".
    options = _OPTION.findall(text)
    return options + _WORD.findall(_OPTION.sub(" ", text))


class _Haystack:
    """A chunk's text as lexical_score searches it: NFKC-folded and lower-cased, with the set
    of its runs of letters and digits (a single-run term is found there without a regex), the
    set of its words without their `.`, `-`, `_` (see `_squashed`), and whether it holds any
    Chinese."""

    __slots__ = ("_latin", "_squashed", "_stems", "chinese", "text", "words")

    def __init__(self, text: str) -> None:
        self.text = text
        # Chinese text writes Latin words without spaces around them ("只用CPU运行"): the
        # Chinese characters end a word as a space does.
        self._latin = _CJK_RUN.sub(" ", text)
        self.words = frozenset(_RUN.findall(self._latin))
        self.chinese = has_cjk(text)
        # Built on first use: most passages (kbqa.relevance scores many per chunk) never ask.
        self._squashed: frozenset[str] | None = None
        self._stems: frozenset[str] | None = None

    @property
    def squashed(self) -> frozenset[str]:
        if self._squashed is None:
            self._squashed = frozenset(_squash(word) for word in _WORD.findall(self._latin))
        return self._squashed

    @property
    def stems(self) -> frozenset[str]:
        if self._stems is None:
            self._stems = frozenset(stem(word) for word in self.squashed)
        return self._stems


_CONNECTORS = re.compile(r"[._\-]")


def _squash(word: str) -> str:
    # "C-Eval" and "CEval", "Q-LoRA" and "QLoRA", "P-Tuning" and "PTuning": one name, spelt
    # with or without its hyphen (bench/eval_zh.py: the C-Eval column is headed "CEval").
    return _CONNECTORS.sub("", word)


@lru_cache(maxsize=2048)
def _haystack(source: str, heading: str, text: str) -> _Haystack:
    # Cached by content: the same chunks are scored again for every question that finds them.
    return _Haystack(unicodedata.normalize("NFKC", f"{source}\n{heading}\n{text}").lower())


def _found(term: str, haystack: _Haystack) -> float:
    """1 if `term` occurs in the text; for a long Chinese term the share of its pairs that do."""
    text = haystack.text
    if not has_cjk(term):
        return 1.0 if _occurs(term, haystack) else 0.0
    if term in text or len(term) < 3:
        return 1.0 if term in text else 0.0
    pairs = [term[i : i + 2] for i in range(len(term) - 1)]
    return sum(pair in text for pair in pairs) / len(pairs)


def _occurs(term: str, haystack: _Haystack) -> bool:
    # Whole words only ("int" must not match "print"); a plural also counts.
    if term.startswith("-"):  # an option: as written, "-g" is not in "-gid" nor "5 g"
        return _whole_word(term).search(haystack.text) is not None
    if _RUN.fullmatch(term):  # the same test as the pattern below, on the text's word runs
        words = haystack.words
        found = term in words or f"{term}s" in words or f"{term}es" in words
    else:  # "chatglm2-6b", "450.80.02": spans several runs
        found = _whole_word(term).search(haystack.text) is not None
    if found:
        return True
    squashed = _squash(term)
    if squashed != term or term in haystack.squashed:  # spelt with connectors here or there
        variants = haystack.squashed
        if squashed in variants or f"{squashed}s" in variants or f"{squashed}es" in variants:
            return True
    return term.endswith("s") and len(term) > 3 and _occurs(term[:-1], haystack)


@lru_cache(maxsize=1024)
def _whole_word(term: str) -> re.Pattern[str]:
    """The pattern `_occurs` searches for a term of several runs or an option (compiled once
    per term: a question's terms are looked for in every passage of every candidate)."""
    if term.startswith("-"):
        return re.compile(rf"(?<!-)(?<!{_LATIN_CHAR}){re.escape(term)}(?!-)(?!{_LATIN_CHAR})")
    return re.compile(rf"(?<!{_LATIN_CHAR}){re.escape(term)}(?:s|es)?(?!{_LATIN_CHAR})")


def lexical_score(question: str, hit: SearchHit, focus: str | None = None) -> float:
    """Weighted share of the question's terms found in the chunk, 0..1.

    `focus`: the user's newest message when `question` joins it to earlier ones (a follow-up
    searched without rewriting). A chunk that contains none of the focus's own terms gets 0:
    it matches only the earlier questions, and the user may have changed the subject.
    """
    terms = query_terms(question)
    if not terms:
        return 0.0
    haystack = _haystack(hit.source, hit.heading or "", hit.text)
    if focus is not None:
        focus_terms = query_terms(focus)
        if focus_terms and not any(_found(term, haystack) for term in focus_terms):
            return 0.0
    return _share(terms, haystack)


def _share(terms: dict[str, int], haystack: _Haystack) -> float:
    """The weighted share of `terms` found in `haystack` (see `lexical_score`)."""
    total = sum(terms.values())
    if total == 0:
        return 0.0
    chinese_question = any(has_cjk(term) for term in terms)
    if not haystack.chinese and chinese_question:
        return _cross_language_share(terms, haystack)
    found = sum(weight * _found(term, haystack) for term, weight in terms.items())
    share = found / total
    if chinese_question and sum(1 for term in terms if not has_cjk(term)) >= MIN_IDENTIFIERS:
        # The identifiers are what a user cannot paraphrase; a chunk with some Chinese in it
        # (a half-translated man page) must not score below the same chunk without it.
        share = max(share, _cross_language_share(terms, haystack))
    return share


def _cross_language_share(terms: dict[str, int], haystack: _Haystack) -> float:
    """A Chinese question against a chunk without Chinese: only its Latin terms (names,
    versions, numbers) can occur there, so they alone are scored, at CROSS_LANGUAGE_SHARE.

    Counting the Chinese terms as missing kept "tiktoken 比其他开源分词器快多少倍" at 0.33 on
    tiktoken's English README (refused, and below Chinese chunks that share one common word);
    scoring the Latin terms at full weight would let any English chunk naming the product
    answer any Chinese question about it."""
    latin = {term: weight for term, weight in terms.items() if not has_cjk(term)}
    total = sum(latin.values())
    if total == 0:
        return 0.0
    found = sum(weight * _found(term, haystack) for term, weight in latin.items())
    return CROSS_LANGUAGE_SHARE * found / total


def dense_weight(question: str, embedding: str) -> float:
    """How much the dense cosine counts for `question` with the KB's `embedding` model."""
    if has_cjk(question) and not reads_chinese(embedding):
        return CJK_DENSE_WEIGHT
    return 1.0


def relevance(
    question: str,
    hit: SearchHit,
    *,
    weight: float = 1.0,
    focus: str | None = None,
    names: frozenset[str] = frozenset(),
    named_nearby: frozenset[str] = frozenset(),
    before: str = "",
    after: str = "",
) -> float:
    """max(weight * dense, lexical) times the factors of the module docstring; `weight` from
    `dense_weight`, 1 for a reranker's score; `names`: the documents the question names
    (kbqa.named_documents); `named_nearby`: the question's names other chunks of the
    document hold (`names_held`); `before`, `after`: the texts of the chunks
    next to the hit in its document (see "Neighbours" in the module docstring)."""
    texts = [hit.text]
    texts += [f"{before}\n{hit.text}"] if before else []
    texts += [f"{hit.text}\n{after}"] if after else []
    best = 0.0
    for text in texts:
        joined = replace(hit, text=text)
        best = max(best, _relevance(question, joined, weight, focus, names, named_nearby, best))
    return best


def _relevance(
    question: str,
    hit: SearchHit,
    weight: float,
    focus: str | None,
    names: frozenset[str],
    named_nearby: frozenset[str],
    beaten: float,
) -> float:
    """The relevance of `hit` as it is, or 0 when it cannot exceed `beaten` (every factor is
    at most 1: a joined text whose words match no better than the best so far is not read
    passage by passage)."""
    dense = min(max(hit.score, 0.0), 1.0) * weight
    score = max(dense, lexical_score(question, hit, focus))
    if score <= beaten:
        return 0.0
    haystack = _haystack(hit.source, hit.heading or "", hit.text)
    asked = focus or question
    missing_names = sum(1 for name in names if not _occurs(name, haystack))
    absent = question_names(asked).asked_of(haystack.chinese) - named_nearby
    return (
        score
        * (SCATTERED_FACTOR if scattered(asked, hit) else 1.0)
        * MISSING_NUMBER_FACTOR ** (missing_numbers(asked, haystack) + missing_names)
        * ABSENT_NAME_FACTOR ** len(absent - _names(absent, haystack))
        * value_passage(asked, hit)
    )


def value_passage(question: str, hit: SearchHit) -> float:
    """For a question asking for a kind of value (kbqa.value_kinds): the share of the
    question's terms found in the chunk's best passage holding such a value (VALUE_WINDOW
    sentences, with the chunk's path and heading), over their share in the whole chunk; at
    least MISSING_KIND_FACTOR, 1 for a question asking for no kind of value. See "The value
    asked, in its passage" in the module docstring."""
    kinds = asked_kinds(question)
    if not kinds:
        return 1.0
    terms = query_terms(question)
    whole = _share(terms, _haystack(hit.source, hit.heading or "", hit.text))
    if whole <= 0:
        return 1.0
    passages = _passages(hit.source, hit.heading or "", hit.text, VALUE_WINDOW // 2)
    shares = [
        _share(terms, passage)
        for passage in passages
        if any(kind.held.search(passage.text) for kind in kinds)
    ]
    if not shares:
        return MISSING_KIND_FACTOR
    return max(MISSING_KIND_FACTOR, min(1.0, max(shares) / whole))


def scattered(question: str, hit: SearchHit) -> bool:
    """Whether a Chinese question's identifiers (its Latin terms, MIN_IDENTIFIERS or more) are
    never all within one passage of SCATTER_WINDOW sentences of the chunk (see the module
    docstring); the chunk's path and heading count as part of every passage."""
    if not has_cjk(question):
        return False
    identifiers = [term for term in query_terms(question) if not has_cjk(term)]
    if len(identifiers) < MIN_IDENTIFIERS:
        return False
    return not any(
        all(_found(term, passage) >= 1 for term in identifiers)
        for passage in _passages(hit.source, hit.heading or "", hit.text, SCATTER_WINDOW // 2)
    )


@lru_cache(maxsize=2048)
def _passages(source: str, heading: str, text: str, reach: int) -> tuple[_Haystack, ...]:
    """Each sentence of `text` with `reach` sentences either side, and the path and heading.
    Cached by content, like `_haystack`: a chunk is split once for all the questions."""
    spans = split_sentences(text) or [(0, len(text))]
    label = f"{source}\n{heading}\n"
    passages = []
    for i in range(len(spans)):
        start = spans[max(0, i - reach)][0]
        end = spans[min(len(spans), i + reach + 1) - 1][1]
        passages.append(_Haystack(unicodedata.normalize("NFKC", label + text[start:end]).lower()))
    return tuple(passages)


def _names(names: Iterable[str], haystack: _Haystack) -> frozenset[str]:
    """The `names` the chunk holds: a Chinese one whole, a Latin one in any of its forms (P-Tune
    is named by "P-Tuning v2": a user asking about a method names it as a verb)."""
    return frozenset(
        name
        for name in names
        if (name in haystack.text if has_cjk(name) else _occurs(name, haystack))
        or stem(_squash(name)) in haystack.stems
    )


def names_held(question: str, hits: Iterable[SearchHit]) -> dict[tuple[str, str], frozenset[str]]:
    """For each (kb, doc_id) among `hits`, the names of `question` (kbqa.question_names) that
    one of its chunks holds (the `named_nearby` of `relevance`)."""
    names = question_names(question).all()
    held: dict[tuple[str, str], frozenset[str]] = {}
    for hit in hits:
        key = (hit.kb, hit.doc_id)
        haystack = _haystack(hit.source, hit.heading or "", hit.text)
        held[key] = held.get(key, frozenset()) | _names(names, haystack)
    return held


def missing_numbers(question: str, haystack: _Haystack) -> int:
    """How many of the question's terms with a digit (4090, int4, qwen-72b, f1) the chunk lacks."""
    return sum(
        1 for term in query_terms(question) if _DIGIT.search(term) and _found(term, haystack) < 1
    )


def with_relevance(
    question: str,
    hit: SearchHit,
    *,
    weight: float = 1.0,
    focus: str | None = None,
    names: frozenset[str] = frozenset(),
    named_nearby: frozenset[str] = frozenset(),
    before: str = "",
    after: str = "",
) -> SearchHit:
    """`hit` with its relevance to `question` stored in extra["relevance"]."""
    score = relevance(
        question,
        hit,
        weight=weight,
        focus=focus,
        names=names,
        named_nearby=named_nearby,
        before=before,
        after=after,
    )
    return replace(hit, extra={**hit.extra, RELEVANCE: score})


def relevance_of(hit: SearchHit) -> float:
    """The relevance `with_relevance` stored (the dense score for a hit it has not seen)."""
    return hit.extra.get(RELEVANCE, hit.score)
