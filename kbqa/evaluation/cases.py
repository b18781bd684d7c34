"""The evaluation file: JSON lines of questions with what a good answer holds.

    {"question": "…", "facts": ["…"], "sources": ["docs/a.md"], "unanswerable": false,
     "history": [["earlier question", "earlier answer"]], "id": "q1"}

Only `question` is required. `facts` are strings the answer must contain; `sources` are the
files a good retrieval finds (matched as equal to, or a path suffix of, a result's source);
`unanswerable` marks questions the knowledge base cannot answer (the right outcome is a
refusal). A malformed line is reported with its number and the rest are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbqa.errors import UsageError
from kbqa.jsonlines import BadLine, json_objects, read_lines
from kbqa.prompting import History, check_history

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class EvalCase:
    line: int
    """1-based line number in the file (or position in a list)."""
    question: str
    id: str = ""
    facts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    unanswerable: bool = False
    history: History = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.id or f"line {self.line}"


def read_cases(path: Path) -> tuple[list[EvalCase], list[BadLine]]:
    """The cases of the file at `path`; UsageError when it cannot be read or holds none."""
    return parse_cases(read_lines(path, "evaluation file", MAX_FILE_BYTES), where=str(path))


def parse_cases(
    lines: list[str], where: str = "the evaluation file"
) -> tuple[list[EvalCase], list[BadLine]]:
    """Cases from JSON lines; blank lines and lines starting with `#` are skipped."""
    objects, bad = json_objects(lines)
    cases: list[EvalCase] = []
    for number, item in objects:
        try:
            cases.append(case_from_json(item, number))
        except UsageError as e:
            bad.append(BadLine(number, str(e)))
    bad.sort(key=lambda b: b.line)
    if not cases:
        detail = ""
        if bad:
            detail = f" ({len(bad)} malformed lines, the first: line {bad[0].line}: {bad[0].error})"
        raise UsageError(f"{where} holds no questions{detail}")
    return cases, bad


def case_from_json(item: object, line: int) -> EvalCase:
    """One case from a decoded JSON object; UsageError naming the faulty field."""
    if not isinstance(item, dict):
        raise UsageError('a line must be a JSON object with a "question"')
    unknown = set(item) - {"id", "question", "facts", "sources", "unanswerable", "history", "lang"}
    if unknown:
        raise UsageError(f"unknown field {sorted(unknown)[0]!r}")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError('"question" must be a non-empty string')
    if len(question) > MAX_QUESTION_CHARS:
        raise UsageError(f'"question" is longer than {MAX_QUESTION_CHARS} characters')
    unanswerable = item.get("unanswerable", False)
    if not isinstance(unanswerable, bool):
        raise UsageError('"unanswerable" must be true or false')
    case_id = item.get("id", "")
    if not isinstance(case_id, str | int) or isinstance(case_id, bool):
        raise UsageError('"id" must be a string')
    try:
        history = check_history(item.get("history"))
    except UsageError as e:
        raise UsageError(f'"history": {e}') from None
    return EvalCase(
        line=line,
        question=question.strip(),
        id=str(case_id),
        facts=_strings(item, "facts"),
        sources=tuple(_source_path(s) for s in _strings(item, "sources")),
        unanswerable=unanswerable,
        history=history,
    )


def _source_path(text: str) -> str:
    path = text.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def source_matches(expected: str, source: str) -> bool:
    """True when `expected` is `source` or a whole-component path suffix of it."""
    return source == expected or source.endswith("/" + expected)


def _strings(item: dict[str, Any], key: str) -> tuple[str, ...]:
    value = item.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f'"{key}" must be a list of non-empty strings')
    return tuple(value)
