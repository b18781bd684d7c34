"""Real documents of every format, built in memory for the ingest tests to write to disk, and
the real loader that reads them back."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from kbqa.ingest.loaders import load_document
from kbqa.ingest.types import LoadError, LoadOptions, Section

# A CID font known to reportlab without font files, so PDFs can carry Chinese text.
_CJK_FONT = "STSong-Light"
pdfmetrics.registerFont(UnicodeCIDFont(_CJK_FONT))

MAX_BYTES = 50 * 2**20


def load(path: Path, options: LoadOptions | None = None) -> list[Section]:
    """The sections the real loader reads from `path`."""
    return load_document(path, max_bytes=MAX_BYTES, options=options)


def error_of(path: Path, options: LoadOptions | None = None, max_bytes: int = MAX_BYTES) -> str:
    """The LoadError the real loader gives for `path`, checked to be one line, as users see it."""
    with pytest.raises(LoadError) as caught:
        load_document(path, max_bytes=max_bytes, options=options)
    message = str(caught.value)
    assert message and "\n" not in message, "errors are one line"
    return message


def pdf_bytes(pages: Sequence[Sequence[str]], encrypt: StandardEncryption | None = None) -> bytes:
    """One page per entry, each line drawn as text; an empty entry draws only a rectangle."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, encrypt=encrypt)
    for lines in pages:
        if not lines:
            pdf.rect(100, 100, 200, 200, fill=1)  # ink without a text layer, like a scan
        pdf.setFont(_CJK_FONT, 12)
        for i, line in enumerate(lines):
            pdf.drawString(72, 720 - 18 * i, line)
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Aurora 运维手册", 0)
    document.add_paragraph("本手册介绍 Aurora 内部知识库的部署。")
    document.add_heading("安装", 1)
    document.add_paragraph("运行 aurora install --offline 完成安装。")
    document.add_heading("硬件要求", 2)
    table = document.add_table(rows=3, cols=2)
    for r, (mode, memory) in enumerate([("模式", "显存"), ("FP16", "13 GB"), ("INT4", "6 GB")]):
        table.cell(r, 0).text = mode
        table.cell(r, 1).text = memory
    document.add_heading("Usage", 1)
    document.add_paragraph("Ask questions with aurora ask.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def xlsx_bytes() -> bytes:
    import datetime as dt

    import openpyxl

    workbook = openpyxl.Workbook()
    specs = workbook.active
    assert specs is not None
    specs.title = "规格"
    specs.append([])  # the header is the first non-empty row
    specs.append(["型号", "显存(GB)", "发布日期"])
    specs.append(["Aurora-S", 6.0, dt.datetime(2024, 3, 1)])
    specs.append(["Aurora-L", 13.5, None])
    prices = workbook.create_sheet("价格")
    prices.append(["版本", "价格"])
    prices.append(["社区版", 0])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
