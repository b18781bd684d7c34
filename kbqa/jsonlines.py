"""Files of JSON lines given by users (`kbqa eval`, `kbqa finetune`): read whole, each line an
object; a malformed line is reported with its number and the rest are kept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbqa.errors import UsageError


@dataclass(frozen=True)
class BadLine:
    line: int
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.error}


def read_lines(path: Path, what: str, max_bytes: int) -> list[str]:
    """The lines of the UTF-8 file at `path` (a BOM allowed); UsageError naming `what` when it
    is too large, unreadable or not UTF-8."""
    try:
        if path.stat().st_size > max_bytes:
            raise UsageError(f"{what} {path} is larger than {max_bytes >> 20} MB")
        return path.read_bytes().decode("utf-8-sig").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None


def json_objects(lines: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], list[BadLine]]:
    """(1-based line number, object) of each JSON-object line; blank and `#` lines skipped."""
    found: list[tuple[int, dict[str, Any]]] = []
    bad: list[BadLine] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(BadLine(number, f"not valid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(item, dict):
            bad.append(BadLine(number, "a line must be a JSON object"))
            continue
        found.append((number, item))
    return found, bad
