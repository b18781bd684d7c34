"""Ruled tables in text-layer PDFs (drawn by reportlab) come out as rows under their header."""

from __future__ import annotations

import io

from ingest_documents import MAX_BYTES
from reportlab.lib import colors
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle

from kbqa.ingest.loaders import load_document
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import Section


def report_pdf(*, ruled: bool) -> bytes:
    """Page 1: a paragraph, a table (grid lines when `ruled`), a paragraph; page 2: text only."""
    style = getSampleStyleSheet()["Normal"]
    table = Table([["模式", "VRAM"], ["FP16", "13 GB"], ["INT4", "6 GB"]])
    commands = [("FONT", (0, 0), (-1, -1), "STSong-Light")]  # registered by ingest_documents
    if ruled:
        commands.append(("GRID", (0, 0), (-1, -1), 0.5, colors.black))
    table.setStyle(TableStyle(commands))
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer).build(
        [
            Paragraph("Memory needs are below.", style),
            table,
            Paragraph("After the table.", style),
            PageBreak(),
            Paragraph("Second page, no table.", style),
        ]
    )
    return buffer.getvalue()


def test_ruled_table_becomes_rows_with_header(write) -> None:
    sections = load_document(write("report.pdf", report_pdf(ruled=True)), max_bytes=MAX_BYTES)
    assert sections == [
        Section("Memory needs are below.\nAfter the table.", page=1),
        TableSection("模式: FP16; VRAM: 13 GB\n模式: INT4; VRAM: 6 GB", page=1),
        Section("Second page, no table.", page=2),
    ]


def test_table_without_rules_stays_page_text(write) -> None:
    sections = load_document(write("plain.pdf", report_pdf(ruled=False)), max_bytes=MAX_BYTES)
    assert not any(isinstance(s, TableSection) for s in sections)
    assert [s.page for s in sections] == [1, 2]
    assert "13 GB" in sections[0].text
