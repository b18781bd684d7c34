"""Tabular records: the section type that keeps rows whole, and how a row is written."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from kbqa.ingest.types import Section


@dataclass(frozen=True)
class TableSection(Section):
    """A section whose text holds one record per line ("header: value; header: value").

    The splitter never breaks a line of it across chunks unless the line alone is over
    the chunk size, and carries no overlap between its chunks (each row stands alone).
    """


def format_value(value: object) -> str:
    """One cell as text: integral floats lose their ".0", midnight datetimes their time."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return " ".join(str(value).split())


def format_row(headers: Sequence[str], values: Sequence[object]) -> str:
    """`header1: value1; header2: value2`, skipping empty cells; extra cells get `column N`."""
    parts = []
    for i, value in enumerate(values):
        text = format_value(value)
        if not text:
            continue
        name = headers[i].strip() if i < len(headers) and headers[i].strip() else f"column {i + 1}"
        parts.append(f"{name}: {text}")
    return "; ".join(parts)


def format_table(rows: Sequence[Sequence[object]]) -> str:
    """Rows under their first non-empty row as header, one record per line.

    A table with a header only (or a single row) is written as that row, cells joined by " | ".
    """
    cleaned = [[format_value(v) for v in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return ""
    if len(cleaned) == 1:
        return " | ".join(v for v in cleaned[0] if v)
    header, body = cleaned[0], cleaned[1:]
    lines = [format_row(header, row) for row in body]
    return "\n".join(line for line in lines if line)
