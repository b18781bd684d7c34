"""The documents a question names by their path: "jieba" for jieba/README.md.

"Which GPU was used to benchmark jieba's segmentation speed?" names jieba/README.md; a chunk
of Qwen's README that never says "jieba" scores on its topic (GPUs, benchmarks) alone.
kbqa.relevance keeps MISSING_NUMBER_FACTOR of the relevance of a chunk that lacks such a name
(`named_documents`), and kbqa.retrieval searches a named document that the KB-wide search
did not reach (`documents_named`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import PurePosixPath

from kbqa.relevance import query_terms
from kbqa.storage.keyword import has_cjk

_DIGIT = re.compile(r"[0-9]")

_GENERIC_PATH_PARTS = frozenset(
    {"readme", "docs", "doc", "data", "faq", "man", "en", "zh", "cn", "packages", "package"}
    | {"pdf", "src", "index", "guide", "manual", "examples", "example", "notes"}
)


def named_documents(question: str, sources: Iterable[str]) -> frozenset[str]:
    """The question's Latin terms that name one of `sources` by a part of its path.

    "Which GPU was used to benchmark jieba's segmentation speed?" names jieba/README.md; a chunk
    of Qwen's README that never says "jieba" scores on its topic (GPUs, benchmarks) alone. Like
    a missing number, each named document's name a chunk lacks (in its text, heading or path)
    keeps MISSING_NUMBER_FACTOR of the relevance. A path part is a folder or the file's stem,
    and also their first word (faiss of faiss-cpu); generic parts (readme, docs, zh) name
    nothing, and terms with a digit are already required as numbers.
    """
    parts: set[str] = set()
    for source in sources:
        parts |= _path_parts(source)
    return frozenset(term for term in naming_terms(question) if term in parts)


def documents_named(question: str, sources: Iterable[str]) -> list[str]:
    """The `sources` that the question names by a part of their path (see `named_documents`).

    The retriever searches these too (kbqa.retrieval): "Typer 报错时想全局关掉 Rich 应该设置哪个
    环境变量？" finds no chunk of typer's English README among its candidates, which the Chinese
    words fill with man pages about environment variables; it names the README all the same.
    """
    terms = naming_terms(question)
    if not terms:
        return []
    return [source for source in sources if terms & _path_parts(source)]


def naming_terms(question: str) -> frozenset[str]:
    """The question's terms that can name a document: Latin, no digit, not generic, > 2 letters."""
    return frozenset(
        term
        for term in query_terms(question)
        if term not in _GENERIC_PATH_PARTS
        and len(term) > 2
        and not _DIGIT.search(term)
        and not has_cjk(term)
    )


@lru_cache(maxsize=4096)
def _path_parts(source: str) -> frozenset[str]:
    """A source's folders and file stem, and their first words (faiss of faiss-cpu)."""
    parts: set[str] = set()
    for part in PurePosixPath(unicodedata.normalize("NFKC", source).lower()).parts:
        name = part.split(".", 1)[0]
        parts |= {name, re.split(r"[-_]", name, maxsplit=1)[0]}
    return frozenset(parts)
