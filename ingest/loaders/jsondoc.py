"""JSON and JSON Lines as "a.b[0].c: value" text; lists of records keep one record per line."""

from __future__ import annotations

import json

from kbqa.ingest.loaders.encoding import decode_text_file
from kbqa.ingest.tables import TableSection, format_value
from kbqa.ingest.types import LoadError, Section


def load_json(data: bytes) -> list[Section]:
    text = decode_text_file(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise LoadError(f"invalid JSON at {where}: {exc.msg}") from exc
    return _non_empty(_sections(value))


def load_jsonl(data: bytes) -> list[Section]:
    records: list[str] = []
    for number, line in enumerate(decode_text_file(data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoadError(f"invalid JSON on line {number}: {exc.msg}") from exc
        record = _record(value)
        if record:
            records.append(record)
    return _non_empty([TableSection(text="\n".join(records))] if records else [])


def _sections(value: object) -> list[Section]:
    """An object's nested members become sections headed by their key; records stay rows."""
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        records = [record for item in value if (record := _record(item))]
        return [TableSection(text="\n".join(records))] if records else []
    if not isinstance(value, dict):
        return [Section(text="\n".join(_lines(value, "")))]
    sections: list[Section] = []
    scalars: list[str] = []
    for key, member in value.items():
        if isinstance(member, dict | list) and member and not _is_scalar_list(member):
            lines = _lines(member, str(key))
            if lines:
                sections.append(Section(text="\n".join(lines), heading=str(key)))
        else:
            scalars.extend(_lines(member, str(key)))
    if scalars:
        sections.insert(0, Section(text="\n".join(scalars)))
    return sections


def _lines(value: object, path: str) -> list[str]:
    """`path: value` for every leaf; lists of scalars stay on one line ("a, b, c")."""
    if isinstance(value, dict):
        lines: list[str] = []
        for key, member in value.items():
            lines.extend(_lines(member, f"{path}.{key}" if path else str(key)))
        return lines
    if isinstance(value, list):
        if _is_scalar_list(value):
            joined = ", ".join(_leaf(item) for item in value)
            return [f"{path}: {joined}" if path else joined] if value else []
        lines = []
        for index, member in enumerate(value):
            lines.extend(_lines(member, f"{path}[{index}]"))
        return lines
    leaf = _leaf(value)
    return [f"{path}: {leaf}" if path else leaf]


def _record(value: object) -> str:
    """One record on one line: its leaves joined by "; "."""
    return "; ".join(" ".join(line.split()) for line in _lines(value, "") if line.strip())


def _is_scalar_list(value: object) -> bool:
    return isinstance(value, list) and not any(isinstance(item, dict | list) for item in value)


def _leaf(value: object) -> str:
    if isinstance(value, str):
        return value
    return "null" if value is None else format_value(value)


def _non_empty(sections: list[Section]) -> list[Section]:
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise LoadError("no text found")
    return sections
