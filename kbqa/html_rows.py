"""Rows of the HTML tables that Markdown READMEs embed, read with their header.

Ingest turns Markdown tables into "header: value; header: value" rows, but a README may write
its table in HTML (Qwen's speed and memory tables), which ingest keeps as it is: one `<td>` per
line. Split into lines, "<td>50.09</td>" says nothing; the row says "Model Size: 7B;
Quantization: Int4; Speed (Tokens/s): 50.09". Each `<tr>…</tr>` is therefore one sentence,
shown as its cells named by the table's header row, with the cells that `rowspan` carries
down from the rows above ("7B" for its Int8 and Int4 rows).

A table may start in the chunk before (`lead`): its header and carried cells are read from
there. Spans are offsets into the chunk's own text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TABLE = re.compile(r"<table\b", re.IGNORECASE)
_ROW_START = re.compile(r"<tr\b[^>]*>", re.IGNORECASE)
_ROW_END = re.compile(r"</tr\s*>", re.IGNORECASE)
_CELL = re.compile(r"<t[dh]\b([^>]*)>(.*?)</t[dh]\s*>", re.IGNORECASE | re.DOTALL)
_ROWSPAN = re.compile(r"rowspan\s*=\s*[\"']?(\d+)", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class Row:
    start: int
    end: int
    """`text[start:end]`: the row's HTML in the chunk's text (a row cut by the chunk's start or
    end: its part in this chunk)."""
    shown: str
    """"header: value; header: value", or the cells joined by "; " where no header is known."""


def html_rows(text: str, lead: str = "") -> list[Row]:
    """The HTML table rows of `text` that hold a cell of their own (not the header row),
    in order. `lead`: the text of the chunk before it in its document, where known."""
    if "<t" not in text.lower():
        return []
    lead = _without_overlap(lead, text)
    joined = f"{lead}\n{text}" if lead else text
    offset = len(joined) - len(text)
    rows: list[Row] = []
    header: list[str] | None = None
    carried: dict[int, tuple[str, int]] = {}  # column → (value, rows left) of rowspan cells
    previous_end = 0
    for start, end in _row_spans(joined):
        opens_table = bool(_TABLE.search(joined, previous_end, start))
        previous_end = end
        cells = _CELL.findall(joined, start, end)
        if not cells:
            continue
        if opens_table:  # its first row names the columns
            header, carried = [_clean(inner) for _, inner in cells], {}
            continue
        values = _fill(cells, carried)
        own = joined[max(start, offset) : end]
        if end <= offset or not _WORD.search(_TAG.sub(" ", own)):
            continue  # the row lies in the chunk before
        if header is not None and len(values) == len(header):
            shown = "; ".join(f"{h}: {v}" for h, v in zip(header, values, strict=True) if v)
        else:
            shown = "; ".join(v for v in values if v)
        rows.append(Row(max(start, offset) - offset, end - offset, shown))
    return rows


OVERLAP = 1000
"""Longest overlap looked for between a chunk and the one before (ingest's chunk overlap)."""


def _without_overlap(lead: str, text: str) -> str:
    """`lead` without the part that `text` repeats at its start (chunks overlap): a row read
    twice would use up its rowspan twice."""
    for size in range(min(len(lead), len(text), OVERLAP), 0, -1):
        if lead.endswith(text[:size]):
            return lead[:-size]
    return lead


def _row_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each `<tr>…</tr>`; a row still open at the end runs to the end, and a
    `</tr>` before any `<tr>` closes a row begun before the text."""
    marks = sorted(
        [(m.start(), m.end(), True) for m in _ROW_START.finditer(text)]
        + [(m.start(), m.end(), False) for m in _ROW_END.finditer(text)]
    )
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    first = True
    for at, after, is_start in marks:
        if is_start:
            if opened is not None:
                spans.append((opened, at))  # an unclosed row ends where the next begins
            opened = at
        elif opened is not None or first:
            spans.append((0 if opened is None else opened, after))
            opened = None
        first = False
    if opened is not None:
        spans.append((opened, len(text)))
    return spans


def _fill(cells: list[tuple[str, str]], carried: dict[int, tuple[str, int]]) -> list[str]:
    """The row's values by column: its own cells, and those carried down by rowspan."""
    values: list[str] = []
    pending = list(cells)
    column = 0
    while pending or column in carried:
        if column in carried:
            value, left = carried[column]
            values.append(value)
            if left > 1:
                carried[column] = (value, left - 1)
            else:
                del carried[column]
        else:
            attributes, inner = pending.pop(0)
            value = _clean(inner)
            values.append(value)
            span = _ROWSPAN.search(attributes)
            if span and int(span.group(1)) > 1:
                carried[column] = (value, int(span.group(1)) - 1)
        column += 1
    return values


def _clean(inner: str) -> str:
    return " ".join(_TAG.sub(" ", inner).split())
