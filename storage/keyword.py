"""Keyword tokenisation shared by indexing and querying (BM25 over SQLite FTS5).

FTS5 only ever sees our tokens joined by spaces: its own tokenizer is told to keep `.`, `-`
and `_` inside tokens, so a token like "python3.9" or "chatglm2-6b" stays one FTS5 term.
Chinese (and Japanese kana) runs are segmented with jieba's search mode, which emits both
words and their sub-words ("知识库" → 知识, 知识库); everything else is split into word
tokens. Mixed tokens are indexed whole and also by their parts, so "INT4" finds "int4"
and "int 4", "450.80.02" finds the exact version as well as "450", and "python3.9" also
yields "3.9", so it finds "Python 3.9". "C++", "C#" and "F#" become "cpp", "csharp" and
"fsharp": FTS5 would otherwise index them all as the letter "c" or "f".
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterator

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B–G
)
_CJK_RUN = re.compile(f"([{_CJK}]+)")
# A word is letters/digits (no underscore) optionally joined by single `.`, `-` or `_`
# to more letters/digits: "python3.9", "450.80.02", "chatglm2-6b", "snake_case".
_WORD = re.compile(r"[^\W_]+(?:[._\-][^\W_]+)*")
_CONNECTOR = re.compile(r"[._\-]")
_LETTERS_OR_DIGITS = re.compile(r"\d+|[^\W\d_]+")
# A dotted number inside a longer word: "3.9" in "python3.9", "11.8" in "cuda11.8".
_DOTTED_NUMBER = re.compile(r"(?<!\d)\d+(?:\.\d+)+")
# Languages named with symbols that tokenisers drop ("c++" would become "c"): spelled out.
_SYMBOL_NAMES = re.compile(r"(?<![a-z0-9_])([cf])(\+\+|#)(?![a-z_])")
_SPELLED = {"++": "pp", "#": "sharp"}
_HAS_CJK = re.compile(f"[{_CJK}]")

# Chinese function and question words, then English function words: frequent in questions,
# useless for matching.
_STOPWORDS = (
    "的 了 是 在 和 与 及 或 也 都 就 而 被 把 这 那 有 吗 呢 吧 啊 之 其 为 对 从 以 于 个 "
    "我 你 他 她 它 我们 你们 他们 一个 什么 怎么 怎样 如何 为什么 哪些 哪个 请问 "
    "a an the of to in on at for and or is are was were be been being it its this that "
    "these those with as by from how what which who whom do does did can could i you we "
    "he she they my your our their me us them not no if then so but"
)
STOPWORDS = frozenset(_STOPWORDS.split())

_jieba_lock = threading.Lock()
_jieba_ready = False


def _cut_cjk(run: str) -> list[str]:
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        with _jieba_lock:
            if not _jieba_ready:
                # jieba logs "Building prefix dict..." at DEBUG/INFO on first use; stay quiet.
                jieba.setLogLevel(logging.ERROR)
                jieba.initialize()
                _jieba_ready = True
    return list(jieba.cut_for_search(run))


def _word_tokens(word: str) -> Iterator[str]:
    yield word
    parts = _CONNECTOR.split(word)
    if len(parts) > 1:
        yield from parts
    for part in parts:
        runs = _LETTERS_OR_DIGITS.findall(part)
        if len(runs) > 1:
            # Lone letters split off a mixed token ("6b" → "b") match everything; drop them.
            yield from (run for run in runs if len(run) > 1 or run.isdigit())
    yield from (number for number in _DOTTED_NUMBER.findall(word) if number != word)


def tokenize(text: str) -> list[str]:
    """Lower-case keyword tokens of `text`, in order, stopwords and punctuation dropped."""
    # NFKC folds full-width forms (ＩＮＴ４, ，) that Chinese input methods produce.
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SYMBOL_NAMES.sub(lambda m: m.group(1) + _SPELLED[m.group(2)], text)
    tokens: list[str] = []
    for i, segment in enumerate(_CJK_RUN.split(text)):
        if not segment:
            continue
        if i % 2 == 1:  # re.split with one capture group puts the CJK runs at odd indexes
            candidates = [w.strip() for w in _cut_cjk(segment)]
        else:
            candidates = [t for w in _WORD.findall(segment) for t in _word_tokens(w)]
        tokens.extend(t for t in candidates if t and t not in STOPWORDS)
    return tokens


def has_cjk(text: str) -> bool:
    return _HAS_CJK.search(text) is not None


def fts_match_expression(text: str, max_terms: int = 64) -> str | None:
    """An FTS5 MATCH expression OR-ing the query's tokens, or None when it has none.

    Every term is a double-quoted FTS5 string, so operators and syntax in user input
    (`AND(`, `NEAR`, `*`, `"`, `:`) are only ever matched as plain words, never parsed.
    """
    terms = list(dict.fromkeys(tokenize(text)))[:max_terms]
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
