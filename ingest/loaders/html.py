"""HTML: visible text under its h1–h6 heading path; tables as header-labelled rows."""

from __future__ import annotations

import codecs
import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Doctype, ProcessingInstruction

from kbqa.ingest.loaders.encoding import decode_text_file
from kbqa.ingest.tables import TableSection, format_row
from kbqa.ingest.types import LoadError, Section

_DROPPED = frozenset({"script", "style", "nav", "noscript", "template", "head", "svg", "iframe"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_PARAGRAPH_BREAK = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "ul", "ol",
        "dl", "pre", "blockquote", "figure", "figcaption", "form", "fieldset", "details",
        "summary", "hr", "address",
    }
)  # fmt: skip
_LINE_BREAK = frozenset({"br", "li", "dt", "dd", "tr", "caption"})
_PRE = "\ue000"  # private-use mark around the index of a <pre> block
_PLACEHOLDER = re.compile(f"{_PRE}(\\d+){_PRE}")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
# Declared Chinese charsets are decoded as their superset: pages labelled gb2312 often hold GBK.
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030"}


def load_html(data: bytes) -> list[Section]:
    soup = BeautifulSoup(_decode(data), "lxml")
    for tag in soup.find_all(_DROPPED):
        tag.decompose()
    walker = _Walker()
    walker.walk(soup)
    walker.flush()
    return walker.sections


def _decode(data: bytes) -> str:
    """The declared charset when it decodes the page, else detection."""
    declared = _META_CHARSET.search(data[:4096])
    if declared:
        name = declared.group(1).decode("ascii", "replace").lower()
        name = _SUPERSETS.get(name, name)
        try:
            codecs.lookup(name)
            text = data.decode(name)
        except (LookupError, UnicodeDecodeError):
            pass
        else:
            if "\x00" in text:
                raise LoadError("binary content, not text")
            return text.replace("\r\n", "\n").replace("\r", "\n")
    return decode_text_file(data)


class _Walker:
    """Walks the tree in document order, cutting a Section at each heading and table."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.stack: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.preformatted: list[str] = []

    @property
    def heading(self) -> str | None:
        return " > ".join(title for _, title in self.stack) or None

    def flush(self) -> None:
        text = _tidy("".join(self.parts), self.preformatted)
        if text:
            self.sections.append(Section(text=text, heading=self.heading))
        self.parts.clear()

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, Comment | Doctype | ProcessingInstruction):
                continue
            if isinstance(child, NavigableString):
                self.parts.append(str(child))
            elif isinstance(child, Tag):
                self._tag(child)

    def _tag(self, tag: Tag) -> None:
        name = tag.name.lower()
        if name in _HEADINGS:
            title = " ".join(tag.get_text(" ").split())
            if title:
                self.flush()
                level = _HEADINGS[name]
                while self.stack and self.stack[-1][0] >= level:
                    self.stack.pop()
                self.stack.append((level, title))
            return
        if name == "table":
            self.flush()
            rows = _table_rows(tag)
            if rows:
                self.sections.append(TableSection(text="\n".join(rows), heading=self.heading))
            return
        if name == "pre":
            # Preformatted text keeps its lines and indentation: _tidy leaves placeholders alone.
            self.preformatted.append(tag.get_text().strip("\n"))
            self.parts.append(f"\n\n{_PRE}{len(self.preformatted) - 1}{_PRE}\n\n")
            return
        if name in _PARAGRAPH_BREAK:
            self.parts.append("\n\n")
        elif name in _LINE_BREAK:
            self.parts.append("\n")
        self.walk(tag)
        if name in _PARAGRAPH_BREAK:
            self.parts.append("\n\n")
        elif name in ("td", "th"):
            self.parts.append(" ")


def _table_rows(table: Tag) -> list[str]:
    """Rows labelled by the header row when the table has <th> cells, else cells joined."""
    rows: list[list[str]] = []
    has_header = False
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a row of a nested table
        cells = tr.find_all(["td", "th"], recursive=False)
        if not rows and any(cell.name == "th" for cell in cells):
            has_header = True
        texts = [" ".join(cell.get_text(" ").split()) for cell in cells]
        if any(texts):
            rows.append(texts)
    if has_header and len(rows) > 1:
        return [line for row in rows[1:] if (line := format_row(rows[0], row))]
    return [" | ".join(text for text in row if text) for row in rows]


def _tidy(text: str, preformatted: list[str]) -> str:
    """Collapse HTML whitespace: spaces within lines, at most one blank line between blocks."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    joined = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return _PLACEHOLDER.sub(lambda m: preformatted[int(m.group(1))], joined)
