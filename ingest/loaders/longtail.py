"""The long tail of formats, read by `unstructured` when its extra is installed, offline.

What it adds: .epub .odt .rtf .rst .org (unstructured converts them with pandoc, which the
pypandoc-binary wheel of the extra carries), .eml and .msg, and .doc .ppt where LibreOffice's
`soffice` is on the PATH (unstructured converts them to .docx/.pptx with it). Without the
package these extensions stay unsupported (skipped by an ingest, refused by an upload).

Offline: unstructured tells narrative text from other text with a spaCy model that it
downloads the first time (en_core_web_sm, from the internet). kbqa uses none of that
classification, only the elements' text, titles, tables and pages, so it hands unstructured
spaCy's blank English pipeline with the rule-based sentencizer instead, which ships inside
spaCy; and it turns unstructured's usage telemetry off before importing it.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from typing import Any

from bs4 import BeautifulSoup

from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import LoadError, LoadOptions, Section

PANDOC_FORMATS = {".epub": "epub", ".odt": "odt", ".rtf": "rtf", ".rst": "rst", ".org": "org"}
MAIL_FORMATS = {".eml": "email", ".msg": "msg"}
OFFICE_FORMATS = {".doc": "doc", ".ppt": "ppt"}
"""Extension → module of unstructured.partition (its function is `partition_<module>`)."""

_ready = threading.Lock()
_offline = False


def available() -> dict[str, str]:
    """The extensions unstructured can read here, each with its partition module."""
    try:
        if importlib.util.find_spec("unstructured") is None:
            return {}
    except (ImportError, ValueError):  # a broken install, or an import hook that hides it
        return {}
    formats = dict(MAIL_FORMATS)
    if _has_pandoc():
        formats |= PANDOC_FORMATS
    if shutil.which("soffice"):
        formats |= OFFICE_FORMATS
    return formats


def loader(module: str) -> Callable[[bytes, LoadOptions], list[Section]]:
    """The loader of one format: its bytes through `unstructured.partition.<module>`."""

    def load(data: bytes, _options: LoadOptions) -> list[Section]:
        partition = _partitioner(module)
        try:
            elements = partition(file=io.BytesIO(data))
        except (ValueError, KeyError, IndexError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise LoadError(f"cannot read the file ({module}): {reason}") from exc
        return sections(elements)

    return load


def sections(elements: Iterable[Any]) -> list[Section]:
    """Elements as Sections: headings make the heading path (by their depth), text under one
    heading and page is joined into one Section, a Table becomes header-labelled rows."""
    out: list[Section] = []
    headings: list[str] = []
    texts: list[str] = []
    page: int | None = None

    def flush() -> None:
        if texts:
            out.append(Section("\n\n".join(texts), page=page, heading=_path(headings)))
            texts.clear()

    for element in elements:
        meta = element.metadata
        text = (element.text or "").strip()
        if getattr(meta, "subject", None) and not headings:  # an e-mail: its subject
            headings = [" ".join(str(meta.subject).split())]
        if meta.page_number != page:
            flush()
            page = meta.page_number
        kind = type(element).__name__
        # A Title from markup (an HTML h1-h6 after pandoc) has a depth. One guessed from plain
        # text (an e-mail body) has none, and with the rule-based pipeline such guesses take
        # most short paragraphs for titles: they stay text.
        if kind == "Title" and text and meta.category_depth is not None:
            flush()
            headings = [*headings[: meta.category_depth], text]
        elif kind == "Table":
            flush()
            rows = _table_rows(meta.text_as_html) if meta.text_as_html else []
            table = format_table(rows) if rows else text
            if table:
                out.append(TableSection(table, page=page, heading=_path(headings)))
        elif text:
            texts.append(text)
    flush()
    return out


def _path(headings: list[str]) -> str | None:
    return " > ".join(headings) if headings else None


def _table_rows(html: str) -> list[list[str]]:
    soup = BeautifulSoup(html, "lxml")
    return [
        [" ".join(cell.get_text(" ").split()) for cell in row.find_all(["th", "td"])]
        for row in soup.find_all("tr")
    ]


def _has_pandoc() -> bool:
    if shutil.which("pandoc"):
        return True
    try:
        import pypandoc

        return bool(pypandoc.get_pandoc_path())
    except (ImportError, OSError):
        return False


def _partitioner(module: str) -> Callable[..., list[Any]]:
    _prepare_offline()
    found = importlib.import_module(f"unstructured.partition.{module}")
    partition: Callable[..., list[Any]] = getattr(found, f"partition_{module}")
    return partition


def _prepare_offline() -> None:
    """Telemetry off, and spaCy's blank English pipeline in place of the downloaded model."""
    global _offline
    with _ready:
        if _offline:
            return
        # Read when unstructured is imported: any non-empty value turns the ping off.
        os.environ["SCARF_NO_ANALYTICS"] = "true"
        os.environ["DO_NOT_TRACK"] = "true"
        os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
        import spacy
        from unstructured.nlp import tokenize

        if not hasattr(tokenize, "_get_nlp"):
            raise LoadError(
                "this unstructured release is not one kbqa knows how to keep offline; "
                "install the version of kbqa's `unstructured` extra"
            )
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        setattr(tokenize, "_get_nlp", lambda: nlp)  # noqa: B010 (a private name, on purpose)
        _offline = True
