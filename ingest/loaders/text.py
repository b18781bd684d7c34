"""Plain text and Markdown: headings (ATX and setext) become heading paths, pipe tables rows."""

from __future__ import annotations

import re

from kbqa.ingest.loaders.encoding import decode_text_file
from kbqa.ingest.tables import TableSection, format_table
from kbqa.ingest.types import Section

# Every pattern here runs in time linear in its line: Markdown is parsed in the ingesting
# process (see kbqa.ingest.isolation), so a hostile line must not cost its length squared. The
# closing #s of an ATX heading are therefore cut in Python (_atx_title), not by a lazy group.
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*))?$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_OR_QUOTE = re.compile(r"^ {0,3}([-*+>]|\d+[.)])(\s|$)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_INLINE_LINK = re.compile(r"!?\[([^\][]*)\]\([^()]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(.+?)\1")


def load_txt(data: bytes) -> list[Section]:
    return [Section(text=decode_text_file(data))]


def load_markdown(data: bytes) -> list[Section]:
    return parse_markdown(decode_text_file(data))


def parse_markdown(text: str) -> list[Section]:
    """One Section per heading's body; headings nest into "A > B > C" paths."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []  # (level, title) of the open headings
    body: list[str] = []
    fence: str | None = None  # the marker that opened the current fenced block

    def heading() -> str | None:
        return " > ".join(title for _, title in stack) or None

    def flush() -> None:
        content = "\n".join(body).strip("\n")
        if content.strip():
            sections.append(Section(text=content, heading=heading()))
        body.clear()

    def open_heading(level: int, title: str) -> None:
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))

    lines = _without_front_matter(text.split("\n"))
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        fence_match = _FENCE.match(line)
        if fence is not None:
            body.append(line)
            if fence_match and _closes(fence_match.group(1), fence, line):
                fence = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            body.append(line)
            continue
        if "|" in line and i < len(lines) and _is_table_rule(lines[i]):
            rows = [_cells(line)]
            i += 1
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            flush()
            table = format_table(rows)
            if table:
                sections.append(TableSection(text=table, heading=heading()))
            continue
        atx = _ATX.match(line)
        if atx:
            title = _plain(_atx_title(atx.group(2) or ""))
            if title:
                open_heading(len(atx.group(1)), title)
            continue
        setext = _SETEXT.match(line)
        if setext and _paragraph_tail(body):
            title_lines = _paragraph_tail(body)
            del body[len(body) - len(title_lines) :]
            title = _plain(" ".join(part.strip() for part in title_lines))
            open_heading(1 if setext.group(1)[0] == "=" else 2, title)
            continue
        body.append(line)
    flush()
    return sections


def _is_table_rule(line: str) -> bool:
    """The delimiter row under a pipe table's header: `| --- | :-: |`."""
    return "|" in line and bool(_TABLE_RULE.match(line))


def _cells(line: str) -> list[str]:
    stripped = line.strip()
    stripped = stripped.removeprefix("|")
    if stripped.endswith("|") and not stripped.endswith("\\|"):
        stripped = stripped[:-1]
    return [_plain(cell.replace("\\|", "|")) for cell in _CELL_SPLIT.split(stripped)]


def _closes(marker: str, fence: str, line: str) -> bool:
    """A closing fence: same character, at least as long, nothing after it."""
    return marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip(" `~")


def _paragraph_tail(body: list[str]) -> list[str]:
    """The lines of the paragraph just above, if a setext underline may follow it."""
    tail: list[str] = []
    for line in reversed(body):
        if not line.strip():
            break
        tail.insert(0, line)
    if tail and tail[0].startswith(("    ", "\t")):  # indented code, not a paragraph
        return []
    if any(_LIST_OR_QUOTE.match(line) or _FENCE.match(line) for line in tail):
        return []
    return tail


def _without_front_matter(lines: list[str]) -> list[str]:
    """Drop the `---` fences of YAML front matter, keeping its lines as plain text."""
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                return [*lines[1:i], "", *lines[i + 1 :]]
    return lines


def _atx_title(text: str) -> str:
    """An ATX heading's text without its optional closing sequence (`## Title ##`)."""
    text = text.rstrip(" \t")
    bare = text.rstrip("#")
    if bare != text and bare[-1:] in (" ", "\t"):
        return bare.rstrip(" \t")
    return text


def _plain(title: str) -> str:
    """Heading text without link targets, emphasis or code marks."""
    title = _INLINE_LINK.sub(r"\1", title)
    title = _EMPHASIS.sub(r"\2", title)
    return " ".join(title.split())
