"""PDFs page by page: the text layer where a page has one, OCR where it has none."""

from __future__ import annotations

import io

from ingest_documents import error_of, load
from ocr_documents import mixed_pdf_bytes, scanned_pdf_bytes, text_image
from PIL import Image
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from kbqa.ingest.types import LoadOptions, Section


def test_mixed_pdf_keeps_the_text_layer_and_reads_the_scan(write) -> None:
    data = mixed_pdf_bytes(["Typed page: the text layer."], text_image(["扫描页：第二页的内容。"]))
    pages: list[tuple[int, int]] = []
    options = LoadOptions(on_page=lambda done, total: pages.append((done, total)))
    assert load(write("mixed.pdf", data), options) == [
        Section("Typed page: the text layer.", page=1),
        Section("扫描页：第二页的内容。", page=2),
    ]
    assert pages == [(1, 2), (2, 2)]


def test_ocr_stops_at_max_pages(write) -> None:
    data = scanned_pdf_bytes([text_image(["Page one"]), text_image(["Page two"])])
    sections = load(write("scan.pdf", data), LoadOptions(ocr_max_pages=1))
    assert sections == [Section("Page one", page=1)]


def test_scan_with_ocr_turned_off(write) -> None:
    data = scanned_pdf_bytes([text_image(["Page one"])])
    expected = "no text layer (scanned PDF?): needs OCR, which is turned off (ocr.enabled)"
    assert error_of(write("scan.pdf", data), LoadOptions(ocr=False)) == expected


def test_page_holding_a_huge_image_is_refused_without_decoding_it(write) -> None:
    # 65 megapixels of one colour: small on disk, a quarter gigabyte once decoded.
    data = scanned_pdf_bytes([Image.new("L", (8100, 8100), 255)])
    assert len(data) < 2_000_000
    assert error_of(write("huge.pdf", data)) == "pages hold images over the 64 megapixel limit"


def test_poster_sized_page_is_rendered_at_a_capped_size(write) -> None:
    """A 100-inch page at 200 DPI would be 20,000 pixels wide; it is read at 4,000."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=(7200, 1800))
    pdf.drawImage(ImageReader(text_image(["Poster title"], size=40, width=360)), 0, 0, 7200, 1800)
    pdf.showPage()
    pdf.save()
    assert load(write("poster.pdf", buffer.getvalue())) == [Section("Poster title", page=1)]
