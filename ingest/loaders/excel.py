"""XLSX with openpyxl (read-only): one Section per sheet, rows under headers.

A formula cell reads as the value its writer cached; a formula without a cached value (files
written by scripts, openpyxl among them, have none) reads as its formula text, `=SUM(B2:B9)`,
rather than as an empty cell: no cell is lost without a word.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from itertools import zip_longest
from typing import Any

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import LoadError, Section

# A formula element in a worksheet part: `<f>…</f>`, `<f t="shared" …/>` (also matches
# `<formula>` of conditional formats: a false alarm only costs reading the formulas).
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[\s>/]")


def load_xlsx(data: bytes) -> list[Section]:
    workbook = _open(data, data_only=True)
    formulas = _open(data, data_only=False) if _has_formulas(data) else None
    if not workbook.worksheets:  # openpyxl silently drops sheets whose parts are missing
        workbook.close()
        raise LoadError("corrupt XLSX: no readable worksheet")
    sections: list[Section] = []
    try:
        for index, sheet in enumerate(workbook.worksheets):
            rows = [list(row) for row in _rows(sheet)]
            if formulas is not None:
                rows = _with_formulas(rows, _rows(formulas.worksheets[index]))
            text = format_table(rows)
            if text:
                sections.append(TableSection(text=text, heading=sheet.title))
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}") from exc
    finally:
        workbook.close()
        if formulas is not None:
            formulas.close()
    if not sections:
        raise LoadError("no text found")
    return sections


def _open(data: bytes, *, data_only: bool) -> Any:
    try:
        return openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=data_only)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # broken XML inside a valid zip
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}") from exc


def _has_formulas(data: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in archive.namelist():
            if name.startswith("xl/worksheets/") and name.endswith(".xml"):
                with archive.open(name) as part:
                    if _FORMULA_TAG.search(part.read()):
                        return True
    return False


def _rows(sheet: Any) -> Iterator[tuple[Any, ...]]:
    # Some writers store a wrong sheet size; forget it so every row is read.
    if hasattr(sheet, "reset_dimensions"):
        sheet.reset_dimensions()
    return sheet.iter_rows(values_only=True)


def _with_formulas(values: list[list[Any]], formulas: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Each cell's cached value, or its formula text where no value was cached."""
    merged = []
    for value_row, formula_row in zip_longest(values, formulas, fillvalue=()):
        merged.append(
            [
                value if value is not None else _formula_text(formula)
                for value, formula in zip_longest(value_row, formula_row)
            ]
        )
    return merged


def _formula_text(cell: Any) -> Any:
    """A formula as its text (array formulas are objects holding it); anything else as is."""
    text = getattr(cell, "text", cell)
    return text if isinstance(text, str) and text.startswith("=") else None
