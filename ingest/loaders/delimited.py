"""CSV (and other delimiter-separated text): each row labelled with the column headers."""

from __future__ import annotations

import csv
import io

from kbqa.ingest.loaders.encoding import decode_text_file
from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import LoadError, Section

_DELIMITERS = ",;\t|"
_SNIFF_CHARS = 16384


def load_csv(data: bytes) -> list[Section]:
    text = decode_text_file(data)
    reader = csv.reader(io.StringIO(text), _dialect(text))
    try:
        rows: list[list[object]] = [list(row) for row in reader]
    except csv.Error as exc:
        raise LoadError(f"invalid CSV at line {reader.line_num}: {exc}") from exc
    table = format_table(rows)
    if not table:
        raise LoadError("no text found")
    return [TableSection(text=table)]


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    """The sniffed dialect of the first lines; plain commas when sniffing is inconclusive."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS:
        sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines only
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
    except csv.Error:
        return csv.excel
