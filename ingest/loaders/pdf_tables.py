"""Ruled tables on a PDF's text-layer pages, found with pdfplumber, kept as header-labelled rows.

pdfplumber (pure Python, over pdfminer.six) is slow next to pypdf, so a page goes to it only
when pdfium counts enough drawn paths on it for a grid; the page's other text is then taken
from pdfplumber too, outside the tables, so that no cell is read twice.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from itertools import islice

import pdfplumber
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from kbqa.ingest.tables import TableSection, format_table

log = logging.getLogger(__name__)

_MIN_PATHS = 4
"""Fewer drawn paths than this cannot rule a table of two rows and two columns."""


@dataclass(frozen=True)
class PageTables:
    """A page's tables as rows and the rest of its text."""

    text: str
    tables: list[TableSection]


class TableFinder:
    """Finds the tables of one PDF's pages, opening the document on first use."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pdfium: pdfium.PdfDocument | None = None
        self._plumber: pdfplumber.PDF | None = None

    def find(self, number: int) -> PageTables | None:
        """Page `number`'s (1-based) tables and other text; None if it has no table."""
        try:
            if self._pdfium is None:
                self._pdfium = pdfium.PdfDocument(self._data)
            paths = self._pdfium[number - 1].get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_PATH])
            if sum(1 for _ in islice(paths, _MIN_PATHS)) < _MIN_PATHS:
                return None
            if self._plumber is None:
                self._plumber = pdfplumber.open(io.BytesIO(self._data))
            return _page_tables(self._plumber.pages[number - 1], number)
        except Exception as exc:  # the page's plain text (pypdf) is still there to fall back on
            log.debug("no table detection on page %d: %s", number, exc)
            return None

    def close(self) -> None:
        if self._plumber is not None:
            self._plumber.close()
        if self._pdfium is not None:
            self._pdfium.close()


def _page_tables(page: pdfplumber.page.Page, number: int) -> PageTables | None:
    found = [t for t in page.find_tables() if _is_table(t.extract())]
    if not found:
        return None
    rest = page
    for table in found:
        rest = rest.outside_bbox(table.bbox)
    sections = []
    for table in sorted(found, key=lambda t: (t.bbox[1], t.bbox[0])):  # top to bottom
        rows = [[cell or "" for cell in row] for row in table.extract()]
        text = format_table(rows)
        if text:
            sections.append(TableSection(text=text, page=number))
    return PageTables(text=rest.extract_text() or "", tables=sections)


def _is_table(rows: list[list[str | None]]) -> bool:
    """Two rows of two cells at least: a single ruled box is a frame around text, not a table."""
    filled = [row for row in rows if sum(1 for cell in row if cell and cell.strip()) >= 2]
    return len(filled) >= 2
