"""Scans, photos and slides built at test time: text we write, drawn with a CJK system font."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# Debian's fonts-wqy-microhei (installed by scripts/setup.sh) draws Chinese and Latin alike.
FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


def text_image(lines: Sequence[str], *, size: int = 32, width: int = 640) -> Image.Image:
    """Black lines of text on white, one under the other, as a scanner at ~200 DPI sees 12 pt."""
    font = ImageFont.truetype(str(FONT_PATH), size)
    image = Image.new("RGB", (width, size * 2 * len(lines) + size), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size // 2, size // 2 + i * size * 2), line, font=font, fill="black")
    return image


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def scanned_pdf_bytes(pages: Sequence[Image.Image]) -> bytes:
    """An image-only PDF (no text layer), one page per image, as a scanner writes it."""
    buffer = io.BytesIO()
    pages[0].save(
        buffer, format="PDF", save_all=True, append_images=list(pages[1:]), resolution=200
    )
    return buffer.getvalue()


def mixed_pdf_bytes(text_lines: Sequence[str], scan: Image.Image) -> bytes:
    """Page 1 with a text layer, page 2 a scan (an image and no text), as merged PDFs often are."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    # Pages the size of the scan at 200 DPI plus a margin: small pages keep the OCR quick.
    width, height = scan.width * 72 / 200, scan.height * 72 / 200
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=(width + 72, max(height, 18 * len(text_lines)) + 72))
    for i, line in enumerate(text_lines):
        pdf.drawString(36, 36 + 18 * (len(text_lines) - 1 - i), line)
    pdf.showPage()
    pdf.drawImage(ImageReader(scan), 36, 36, width, height)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()
