"""XLSX with openpyxl (read-only, cached values): one Section per sheet, rows under headers."""

from __future__ import annotations

import io
import zipfile

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from ingest.tables import TableSection, format_table
from ingest.types import LoadError, Section


def load_xlsx(data: bytes) -> list[Section]:
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # broken XML inside a valid zip
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}") from exc
    if not workbook.worksheets:  # openpyxl silently drops sheets whose parts are missing
        workbook.close()
        raise LoadError("corrupt XLSX: no readable worksheet")
    sections: list[Section] = []
    try:
        for sheet in workbook.worksheets:
            # Some writers store a wrong sheet size; forget it so every row is read.
            if hasattr(sheet, "reset_dimensions"):
                sheet.reset_dimensions()
            rows = [list(row) for row in sheet.iter_rows(values_only=True)]
            text = format_table(rows)
            if text:
                sections.append(TableSection(text=text, heading=sheet.title))
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"corrupt XLSX: {type(exc).__name__}") from exc
    finally:
        workbook.close()
    if not sections:
        raise LoadError("no text found")
    return sections
