"""The names a question asks about: things a passage must name to be about them at all.

"Does HTTPX support HTTP/3 over QUIC?" shares HTTPX, HTTP and support with httpx's README,
which never says QUIC; "怎样用 jieba 给日语文本分词？" shares jieba, 文本 and 分词 with jieba's
README, which never says 日语; "Which uses less memory, Uvicorn or Daphne?" meets uvicorn's
README. The lexical share sees three terms of four and the question passes; the one term
missing is the one the question is about. Words a user paraphrases (账号 for 账户, 处理器 for
CPU) must not count that way, so only names do, of three sorts:

- identifiers, written the same in any language: camel case (HanLP, DeepSpeed), code
  (login.defs, UID_MIN), and in a Chinese question any Latin word with a capital (Debian, AES,
  QUIC): Chinese text keeps such names as they are written;
- in an English question, a word with a capital that does not start its sentence (Daphne,
  Japanese, QUIC, GPU): a Chinese text may translate it (日语, 显卡), so it is asked of text
  without Chinese;
- in a Chinese question, a proper noun by jieba's part-of-speech tags (person nr, organisation
  nt: 李白) or a language (日语), asked of text with Chinese.

A lower-case Latin word is left out even in a Chinese question: token, batch size, demo are
vocabulary a Chinese document may write in Chinese (jieba, usermod, the names of documents, are
required by kbqa.named_documents).

Terms with a digit are left to kbqa.relevance's missing numbers. kbqa.relevance asks whether a
name occurs in any candidate chunk of the hit's document, not only in the hit: an answer's
subject is often named in the chunk before (see `ABSENT_NAME_FACTOR` there).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from kbqa.storage.keyword import STOPWORDS, has_cjk

_LATIN_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:[._\-+][A-Za-z0-9]+)*")
"""A Latin word, not the unit of a number (the GB of 24GB)."""
_CODE = re.compile(r"[a-z][A-Z]|[A-Za-z0-9]{2}[._][A-Za-z0-9]{2}")
"""Camel case (HanLP, DeepSpeed) or a code identifier (login.defs, UID_MIN, api.py; not i.e.)."""
_CAPITAL = re.compile(r"[A-Z]")
_SENTENCE_END = re.compile(r"[.?!;:。？！；：]\s*$")
_PROPER_NOUN_TAGS = frozenset({"nr", "nt"})
"""Person and organisation. jieba's dictionary also tags common words as names: places (ns) 新建
and 长度, transliterations (nrt) 比特, other proper nouns (nz) 聊天, all in questions of the
evaluation (bench/RESULTS.md); those tags are not trusted."""
_LANGUAGE = re.compile(r"[语文]$")
"""Of the nz words, languages (日语, 中文) are names."""
_QUESTION_WORDS_TEXT = (
    "who what which when where why how does do did is are was were can could should would "
    "will shall may might must i"
)
_QUESTION_WORDS = frozenset(_QUESTION_WORDS_TEXT.split())


@dataclass(frozen=True)
class Names:
    """A question's names, lower-cased, by where they must occur."""

    anywhere: frozenset[str] = frozenset()
    """Identifiers: in any passage."""
    latin: frozenset[str] = frozenset()
    """Capitalised English words: in passages without Chinese."""
    chinese: frozenset[str] = frozenset()
    """Chinese proper nouns: in passages with Chinese."""

    def all(self) -> frozenset[str]:
        return self.anywhere | self.latin | self.chinese

    def asked_of(self, chinese_text: bool) -> frozenset[str]:
        """The names a passage must hold, given whether it has Chinese text."""
        return self.anywhere | (self.chinese if chinese_text else self.latin)


@lru_cache(maxsize=256)
def question_names(question: str) -> Names:
    """The names of `question` (see the module docstring)."""
    text = unicodedata.normalize("NFKC", question)
    chinese = has_cjk(text)
    anywhere: list[str] = []
    latin: list[str] = []
    for match in _LATIN_WORD.finditer(text):
        word = match.group()
        if _CODE.search(word) or (chinese and _CAPITAL.search(word)):
            anywhere.append(word)
        elif not chinese and _CAPITAL.search(word) and not _starts_sentence(text, match.start()):
            latin.append(word)
    if chinese:
        return Names(anywhere=_keep(anywhere), chinese=_proper_nouns(text))
    return Names(anywhere=_keep(anywhere), latin=_keep(latin))


def _starts_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip("\"'“‘([ ")
    return not before or _SENTENCE_END.search(before) is not None


def _keep(words: list[str]) -> frozenset[str]:
    return frozenset(
        word
        for word in (w.lower() for w in words)
        if len(word) > 1
        and not any(c.isdigit() for c in word)
        and word not in STOPWORDS
        and word not in _QUESTION_WORDS
    )


def _proper_nouns(text: str) -> frozenset[str]:
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.ERROR)
    return frozenset(
        pair.word.lower()
        for pair in jieba.posseg.cut(text)
        if (pair.flag in _PROPER_NOUN_TAGS or (pair.flag == "nz" and _LANGUAGE.search(pair.word)))
        and len(pair.word) > 1
        and has_cjk(pair.word)
    )
