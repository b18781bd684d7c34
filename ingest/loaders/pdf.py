"""PDF page by page: the text layer (pypdf) where a page has one, OCR where it has none.

One Section per page that has text, pages numbered from 1; a scanned page is rendered with
pypdfium2 at the configured DPI and read by OCR (kbqa.ingest.ocr), so mixed documents keep both.
Ruled tables on text pages become TableSections of header-labelled rows (pdf_tables).
"""

from __future__ import annotations

import io
import logging
import re

from pypdf import PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

from kbqa.ingest.limits import check_pages
from kbqa.ingest.loaders.pdf_ocr import ScanReader
from kbqa.ingest.loaders.pdf_tables import TableFinder
from kbqa.ingest.types import LoadError, LoadOptions, Section

_CJK = r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]"
# A line break between two Chinese characters is a wrap inside a sentence, not a space.
_CJK_WRAP = re.compile(rf"(?<={_CJK})\n(?={_CJK})")
_HYPHEN_WRAP = re.compile(r"(?<=[a-z])-\n(?=[a-z])")


def load_pdf(data: bytes, options: LoadOptions) -> list[Section]:
    # pypdf logs every repaired xref at WARNING; the result or the LoadError says what matters.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise LoadError("encrypted PDF: needs a password")
        check_pages(len(reader.pages), options.limits)  # before a page is read
        pages = list(reader.pages)
    except LoadError:
        raise
    except (DependencyError, FileNotDecryptedError) as exc:
        raise LoadError(f"encrypted PDF that cannot be opened here: {exc}") from exc
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError…)
        raise LoadError(f"corrupt PDF: {_reason(exc)}") from exc
    if not pages:
        raise LoadError("corrupt PDF: no pages")

    sections: list[Section] = []
    failures = 0
    scans = ScanReader(data, options)
    tables = TableFinder(data)
    for number, page in enumerate(pages, start=1):
        try:
            text = _tidy(page.extract_text() or "")
        except Exception:  # one broken content stream should not lose the other pages
            failures += 1
            text = ""
        found = tables.find(number) if text else None
        if found is not None:
            text = _tidy(found.text)
        elif not text:
            text = scans.read(number)
        if text:
            sections.append(Section(text=text, page=number))
        if found is not None:
            sections.extend(found.tables)
        options.page_done(number, len(pages))
    scans.close()
    tables.close()
    if not sections:
        if failures == len(pages):
            raise LoadError("corrupt PDF: no page could be read")
        raise LoadError(scans.why_empty())
    return sections


def _opens_without_password(reader: PdfReader) -> bool:
    """Many PDFs are encrypted only to set permissions; they open with the empty password."""
    try:
        return bool(reader.decrypt(""))
    except (DependencyError, NotImplementedError) as exc:
        raise LoadError(f"encrypted PDF that cannot be opened here: {exc}") from exc


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    text = _HYPHEN_WRAP.sub("", text)
    text = _CJK_WRAP.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _reason(exc: Exception) -> str:
    message = " ".join(str(exc).split())[:200] or type(exc).__name__
    return message if isinstance(exc, PyPdfError) else f"{type(exc).__name__}: {message}"
