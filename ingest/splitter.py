"""Sections → Chunks: recursive splitting on paragraph, sentence, line and clause boundaries.

Each section is cut into small "atoms" (clauses, code lines, table rows) that remember how
strong the boundary after them is. Atoms are then packed greedily up to the chunk size; when
a chunk is full it is cut at the strongest boundary in its second half (or at an earlier
paragraph end when the second half has no sentence end), so chunks end at paragraph or
sentence ends wherever the text allows. The next chunk starts with the last
whole sentences (else clauses) of the previous one, up to the overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import Chunk, Section

# Boundary strengths, strongest first in preference.
PARAGRAPH, SENTENCE, LINE, CLAUSE, NONE = 4, 3, 2, 1, 0

_CLOSERS = "”’」』）)\\]】》\"'"
_SENTENCE_END = re.compile(
    rf"(?:[。！？；]|…+)[{_CLOSERS}]*"  # Chinese: no space needed after
    rf"|[.!?;]+[{_CLOSERS}]*(?=\s)"  # English: only before a space (not 3.9, not a.b)
    r"|[!?]+(?=[\u4e00-\u9fff])"  # ASCII !/? typed inside Chinese text
)
_CLAUSE_END = re.compile(r"[，、：]|,(?=\s)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_LATIN = re.compile(r"[A-Za-z]")
_Length = Callable[[int, int], int]  # joined length of atoms[start:end]
_MIN_FILL = 0.5  # a chunk may end early at a stronger boundary, but not before half full


@dataclass(frozen=True)
class _Atom:
    text: str
    sep: str  # the whitespace that follows it in the chunk text
    strength: int  # of the boundary after it


def split_sections(
    sections: list[Section], *, chunk_size: int, chunk_size_zh: int, chunk_overlap: int
) -> list[Chunk]:
    """Chunks of at most the size (Chinese sections: chunk_size_zh), positions 0, 1, 2, …

    A chunk stays within one section, so it carries that section's page and heading. Rows
    of tabular sections are never split unless one row alone is over the size.
    """
    if min(chunk_size, chunk_size_zh) < 1 or chunk_overlap < 0:
        raise ValueError("chunk sizes must be positive and the overlap not negative")
    chunks: list[Chunk] = []
    for section in sections:
        text = _normalise(section.text)
        size = chunk_size_zh if is_mostly_chinese(text) else chunk_size
        if isinstance(section, TableSection):
            # Rows stand alone: no overlap; a row over the size is packed on its own.
            groups, overlap = _table_groups(text, size), 0
        else:
            groups, overlap = [_text_atoms(text, size)], min(chunk_overlap, size // 2)
        for atoms in groups:
            for piece in _pack(atoms, size, overlap):
                chunks.append(Chunk(piece, section.page, section.heading, position=len(chunks)))
    return chunks


def embed_text(chunk: Chunk, source: str) -> str:
    """The text to embed and index: "file stem > heading path", then the chunk text."""
    title = " > ".join(
        part for part in (PurePosixPath(source.replace("\\", "/")).stem, chunk.heading) if part
    )
    return f"{title}\n{chunk.text}" if title else chunk.text


def is_mostly_chinese(text: str) -> bool:
    """Chinese characters weigh as much as two Latin letters: "INT4 量化后显存需求" is Chinese."""
    cjk = len(_CJK.findall(text))
    return cjk > 0 and 2 * cjk >= len(_LATIN.findall(text))


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _table_groups(text: str, size: int) -> list[list[_Atom]]:
    """Runs of rows that fit the size, one atom per row; each longer row is its own group."""
    groups: list[list[_Atom]] = [[]]
    for row in (line.strip() for line in text.split("\n")):
        if not row:
            continue
        if len(row) <= size:
            groups[-1].append(_Atom(row, "\n", PARAGRAPH))
        else:
            groups.extend([_line_atoms(row, size), []])
    return [group for group in groups if group]


def _text_atoms(text: str, size: int) -> list[_Atom]:
    atoms: list[_Atom] = []
    for block, is_code in _blocks(text):
        lines = block.split("\n")
        block_atoms: list[_Atom] = []
        for line in lines:
            if is_code:
                # Code lines join weakly, so a cut lands outside the block if it can.
                block_atoms.extend(_close(_hard_split(line, size), "\n", CLAUSE))
            elif line.strip():
                block_atoms.extend(_close(_line_atoms(line.strip(), size), "\n", LINE))
        atoms.extend(_close(block_atoms, "\n\n", PARAGRAPH))
    return atoms


def _blocks(text: str) -> list[tuple[str, bool]]:
    """Paragraphs between blank lines; a fenced code block is one block, blank lines and all."""
    blocks: list[tuple[str, bool]] = []
    current: list[str] = []
    fence: str | None = None

    def flush(is_code: bool) -> None:
        if any(line.strip() for line in current):
            blocks.append(("\n".join(current), is_code))
        current.clear()

    for line in text.split("\n"):
        match = _FENCE.match(line)
        if fence is None and match:
            flush(False)
            fence = match.group(1)
            current.append(line)
        elif fence is not None:
            current.append(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
                flush(True)
        elif not line.strip():
            flush(False)
        else:
            current.append(line)
    flush(fence is not None)
    return blocks


def _line_atoms(line: str, size: int) -> list[_Atom]:
    """Clauses of a line, each ending with the strength of its end (sentence or clause)."""
    atoms: list[_Atom] = []
    for sentence in _cut(line, _SENTENCE_END):
        clauses = [_close(_hard_split(c, size), None, CLAUSE) for c in _cut(sentence, _CLAUSE_END)]
        pieces = [atom for clause in clauses for atom in clause]
        atoms.extend(_close(pieces, None, SENTENCE))
    return atoms


def _cut(text: str, boundary: re.Pattern[str]) -> list[str]:
    """Pieces ending after each boundary match, trailing spaces included; "".join == text."""
    pieces: list[str] = []
    start = 0
    for match in boundary.finditer(text):
        end = match.end()
        while end < len(text) and text[end] == " ":
            end += 1
        if end > start and text[start:end].strip():
            pieces.append(text[start:end])
            start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _hard_split(text: str, size: int) -> list[_Atom]:
    """Text over the size in pieces of at most `size`, at a space where there is one."""
    atoms: list[_Atom] = []
    rest = text
    while len(rest) > size:
        cut = rest.rfind(" ", size // 2, size + 1)
        if cut <= 0:
            atoms.append(_Atom(rest[:size], "", NONE))
            rest = rest[size:]
        else:
            atoms.append(_Atom(rest[:cut].rstrip(), " ", NONE))
            rest = rest[cut:].lstrip(" ")
    stripped = rest.rstrip()
    atoms.append(_Atom(stripped, rest[len(stripped) :], NONE))
    return atoms


def _close(atoms: list[_Atom], sep: str | None, strength: int) -> list[_Atom]:
    """Mark the last atom as ending at a boundary at least this strong (sep None: keep its sep)."""
    if not atoms:
        return atoms
    last = atoms[-1]
    new_sep = last.sep if sep is None else sep
    return [*atoms[:-1], _Atom(last.text, new_sep, max(last.strength, strength))]


def _pack(atoms: list[_Atom], size: int, overlap: int) -> list[str]:
    """Greedy packing with a cut at the best boundary and a sentence-aligned overlap."""
    # offsets[i] = length of atoms[:i] joined with their separators.
    offsets = [0]
    for atom in atoms:
        offsets.append(offsets[-1] + len(atom.text) + len(atom.sep))

    def length(start: int, end: int) -> int:
        return offsets[end] - offsets[start] - len(atoms[end - 1].sep)

    chunks: list[str] = []
    start = fresh = 0  # first atom of the chunk / first atom not carried over as overlap
    while fresh < len(atoms):
        end = fresh + 1
        while end < len(atoms) and length(start, end + 1) <= size:
            end += 1
        if end < len(atoms):
            end = _best_cut(atoms, start, fresh, end, length)
        text = "".join(atom.text + atom.sep for atom in atoms[start:end]).strip()
        if text:
            chunks.append(text)
        previous, start, fresh = fresh, end, end
        if end < len(atoms) and overlap:
            start = _overlap_start(atoms, previous, end, overlap, size, length)
    return chunks


def _best_cut(atoms: list[_Atom], start: int, fresh: int, end: int, length: _Length) -> int:
    """The cut (index after the chunk's last atom) at the strongest boundary past half full.

    Ties go to the later cut, so chunks stay as full as the boundaries allow. When no
    sentence ends past half full (a long sentence, a code block), an earlier paragraph end wins.
    """
    least = _MIN_FILL * length(start, end)
    best = end
    for k in range(end - 1, fresh, -1):
        if length(start, k) < least:
            break
        if atoms[k - 1].strength > atoms[best - 1].strength:
            best = k
    if atoms[best - 1].strength < SENTENCE:
        for k in range(best - 1, fresh, -1):
            if atoms[k - 1].strength == PARAGRAPH:
                return k
    return best


def _overlap_start(
    atoms: list[_Atom], previous: int, end: int, overlap: int, size: int, length: _Length
) -> int:
    """Where the next chunk starts: the earliest sentence (else clause) start in the tail of
    the chunk atoms[previous:end] that fits the overlap and leaves room for the next atom."""
    for minimum in (SENTENCE, CLAUSE):
        for j in range(previous + 1, end):
            if atoms[j - 1].strength < minimum:
                continue
            if length(j, end) <= overlap and length(j, end + 1) <= size:
                return j
    return end
