"""PPTX with python-pptx: one Section per slide, numbered as its page, titled by its title.

Speaker notes belong to the slide they annotate, so they end the slide's text; tables are
header-labelled rows (a TableSection on the same page), as in DOCX and XLSX.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import pptx
from pptx.exc import PackageNotFoundError
from pptx.shapes.base import BaseShape
from pptx.shapes.group import GroupShape
from pptx.slide import Slide

from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import LoadError, Section

# Office writes password-protected OOXML files as OLE compound files, not zips (as are .ppt).
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def load_pptx(data: bytes) -> list[Section]:
    if data.startswith(_OLE_MAGIC):
        raise LoadError("encrypted PPTX (password-protected) or an old binary .ppt file")
    try:
        presentation = pptx.Presentation(io.BytesIO(data))
        slides = list(presentation.slides)
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as exc:
        raise LoadError(f"corrupt PPTX: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # broken XML inside a valid zip
        raise LoadError(f"corrupt PPTX: {type(exc).__name__}") from exc
    sections: list[Section] = []
    for number, slide in enumerate(slides, start=1):
        sections.extend(_slide_sections(slide, number))
    if not sections:
        raise LoadError("no text found")
    return sections


def _slide_sections(slide: Slide, page: int) -> list[Section]:
    title_shape = slide.shapes.title
    title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
    body: list[str] = []
    tables: list[Section] = []
    for shape in _shapes(slide.shapes):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue
        if getattr(shape, "has_table", False):
            rows = [[cell.text for cell in row.cells] for row in shape.table.rows]  # type: ignore[attr-defined]
            text = format_table(rows)
            if text:
                tables.append(TableSection(text=text, page=page, heading=title or None))
        elif getattr(shape, "has_text_frame", False):
            text = shape.text_frame.text.strip()  # type: ignore[attr-defined]
            if text:
                body.append(text)
    if slide.has_notes_slide:
        notes_frame = slide.notes_slide.notes_text_frame
        notes = notes_frame.text.strip() if notes_frame is not None else ""
        if notes:
            body.append(f"Notes: {notes}")
    text = "\n".join(body)
    if not text and not tables and title:
        text = title  # a title-only slide still says something
    main = [Section(text=text, page=page, heading=title or None)] if text else []
    return main + tables


def _shapes(shapes: object) -> Iterator[BaseShape]:
    """Every shape in reading order, the members of groups included."""
    for shape in shapes:  # type: ignore[attr-defined]
        if isinstance(shape, GroupShape):
            yield from _shapes(shape.shapes)
        else:
            yield shape
