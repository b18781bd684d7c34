"""PPTX built with python-pptx at test time: slides as pages, titles as headings, notes kept."""

from __future__ import annotations

import io
from pathlib import Path

import pptx
import pytest
from ingest_documents import MAX_BYTES
from pptx.util import Inches

from kbqa.ingest.loaders import load_document
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import LoadError, Section


def deck_bytes() -> bytes:
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])  # title and content
    slide.shapes.title.text = "Aurora 部署"
    slide.placeholders[1].text = "离线安装：aurora install --offline"
    slide.notes_slide.notes_text_frame.text = "提醒听众：需要 6 GB 显存。"
    slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    slide.shapes.title.text = "Memory"
    table = slide.shapes.add_table(3, 2, Inches(1), Inches(2), Inches(6), Inches(2)).table
    for r, (mode, memory) in enumerate([("Mode", "VRAM"), ("FP16", "13 GB"), ("INT4", "6 GB")]):
        table.cell(r, 0).text = mode
        table.cell(r, 1).text = memory
    box = slide.shapes.add_textbox(Inches(1), Inches(5), Inches(6), Inches(1))
    box.text_frame.text = "Measured on one GPU."
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text at all, no section
    slide = deck.slides.add_slide(deck.slide_layouts[0])
    slide.shapes.title.text = "Questions?"
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def test_slides_are_pages_with_titles_notes_and_table_rows(write) -> None:
    sections = load_document(write("talk.pptx", deck_bytes()), max_bytes=MAX_BYTES)
    assert sections == [
        Section(
            "离线安装：aurora install --offline\nNotes: 提醒听众：需要 6 GB 显存。",
            page=1,
            heading="Aurora 部署",
        ),
        Section("Measured on one GPU.", page=2, heading="Memory"),
        TableSection("Mode: FP16; VRAM: 13 GB\nMode: INT4; VRAM: 6 GB", page=2, heading="Memory"),
        Section("Questions?", page=4, heading="Questions?"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # What Office writes for a password-protected deck: an OLE compound file.
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512,
            "encrypted PPTX (password-protected) or an old binary .ppt file",
        ),
        (b"PK\x03\x04 not really a zip", "corrupt PPTX: BadZipFile: File is not a zip file"),
    ],
)
def test_encrypted_and_corrupt_decks(write, data: bytes, expected: str) -> None:
    with pytest.raises(LoadError) as caught:
        load_document(write("deck.pptx", data), max_bytes=MAX_BYTES)
    assert str(caught.value) == expected


def test_deck_without_text(tmp_path: Path) -> None:
    deck = pptx.Presentation()
    deck.slides.add_slide(deck.slide_layouts[6])
    path = tmp_path / "blank.pptx"
    deck.save(str(path))
    with pytest.raises(LoadError, match=r"^no text found$"):
        load_document(path, max_bytes=MAX_BYTES)
