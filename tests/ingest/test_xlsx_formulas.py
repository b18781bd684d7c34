"""xlsx formula cells: the value the writer cached, else the formula text, never an empty cell.

The workbooks are written by openpyxl at test time. openpyxl stores formulas without a cached
value (`<f>B2*C2</f><v></v>`); a spreadsheet application stores the value it computed in that
`<v>`, which the test does by editing the sheet's XML in the saved file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import openpyxl
from ingest_documents import MAX_BYTES

from kbqa.ingest.loaders import load_document

SHEET = "xl/worksheets/sheet1.xml"


def _workbook() -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["item", "price", "qty", "total"])
    sheet.append(["disk", 20, 3, "=B2*C2"])
    sheet.append(["fan", 5, 2, "=B3*C3"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _with_cached_value(data: bytes, formula: str, value: str) -> bytes:
    """The file as a spreadsheet application saves it: `value` cached beside `formula`."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            part = source.read(item.filename)
            if item.filename == SHEET:
                uncached = f"<f>{formula}</f><v></v>".encode()
                assert uncached in part
                part = part.replace(uncached, f"<f>{formula}</f><v>{value}</v>".encode())
            target.writestr(item, part)
    return out.getvalue()


def test_cached_value_where_present_formula_text_where_not(
    write: Callable[..., Path],
) -> None:
    data = _with_cached_value(_workbook(), "B2*C2", "60")
    sections = load_document(write("totals.xlsx", data), max_bytes=MAX_BYTES)
    assert [s.text for s in sections] == [
        "item: disk; price: 20; qty: 3; total: 60\nitem: fan; price: 5; qty: 2; total: =B3*C3"
    ]


def test_workbook_without_any_cached_value_keeps_every_formula(
    write: Callable[..., Path],
) -> None:
    sections = load_document(write("plain.xlsx", _workbook()), max_bytes=MAX_BYTES)
    assert "total: =B2*C2" in sections[0].text
    assert "total: =B3*C3" in sections[0].text
