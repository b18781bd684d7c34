"""DOCX with python-docx: heading styles become heading paths, tables header-labelled rows."""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.ns import qn
from docx.table import Table
from docx.text.paragraph import Paragraph

from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import LoadError, Section

# English and Chinese Word name their built-in heading styles "Heading 1" / "标题 1".
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*(\d)$", re.I)


def load_docx(data: bytes) -> list[Section]:
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(document.iter_inner_content())
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as exc:
        raise LoadError(f"corrupt DOCX: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # broken XML inside a valid zip
        raise LoadError(f"corrupt DOCX: {type(exc).__name__}") from exc

    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []

    def heading() -> str | None:
        return " > ".join(title for _, title in stack) or None

    def flush() -> None:
        text = "\n".join(body).strip()
        if text:
            sections.append(Section(text=text, heading=heading()))
        body.clear()

    for block in blocks:
        if isinstance(block, Table):
            flush()
            rows = format_table(_table_cells(block))
            if rows:
                sections.append(TableSection(text=rows, heading=heading()))
            continue
        text = block.text.strip()
        if not text:
            continue
        level = _heading_level(block)
        if level is None:
            body.append(text)
            continue
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, " ".join(text.split())))
    flush()
    if not sections:
        raise LoadError("no text found")
    return sections


def _heading_level(paragraph: Paragraph) -> int | None:
    """1..9 for headings (Title is 0), from the style name or the outline level."""
    style = paragraph.style
    name = style.name if style is not None and style.name else ""
    if name.lower() == "title":
        return 0
    match = _HEADING_STYLE.match(name.strip())
    if match:
        return int(match.group(1))
    # Custom heading styles declare an outline level (0-based; 9 means body text).
    elements = [paragraph._p.pPr]
    while style is not None:
        elements.append(style.element.pPr)
        style = style.base_style
    for ppr in elements:
        if ppr is None:
            continue
        outline = ppr.find(qn("w:outlineLvl"))
        if outline is not None:
            value = int(outline.get(qn("w:val"), "9"))
            return value + 1 if value < 9 else None
    return None


def _table_cells(table: Table) -> list[list[str]]:
    """Cell texts per row; a merged cell is listed once, not once per grid column it spans."""
    rows: list[list[str]] = []
    for row in table.rows:
        seen: set[int] = set()
        cells: list[str] = []
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        rows.append(cells)
    return rows
