"""OCR of the PDF pages that have no text layer: rendered with pypdfium2, read by
kbqa.ingest.ocr."""

from __future__ import annotations

import logging

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from kbqa.ingest.ocr import MAX_PIXELS, MAX_SIDE, recognize
from kbqa.ingest.types import LoadOptions

log = logging.getLogger(__name__)


class ScanReader:
    """Reads scanned pages of one PDF on demand, opening the document on the first one.

    Counts what it could not do (OCR off, page limit reached, pages too large) so that a PDF
    that yields no text at all gets an error naming the reason.
    """

    def __init__(self, data: bytes, options: LoadOptions) -> None:
        self._data = data
        self._options = options
        self._document: pdfium.PdfDocument | None = None
        self._read = 0
        self._over_limit = 0
        self._too_large = 0
        self._errors: list[str] = []

    def read(self, number: int) -> str:
        """The OCR text of page `number` (1-based), "" where none is found or allowed."""
        if not self._options.ocr:
            return ""
        if self._read >= self._options.ocr_max_pages:
            self._over_limit += 1
            return ""
        self._read += 1
        try:
            page = self._open()[number - 1]
            if _largest_image_pixels(page) > MAX_PIXELS:
                self._too_large += 1
                return ""
            width, height = page.get_size()  # points, 1/72 inch
            # A page of a poster's size at 300 DPI would be a gigapixel: cap the longest side.
            scale = min(self._options.ocr_dpi / 72, MAX_SIDE / max(width, height, 1))
            image = page.render(scale=scale).to_pil()
        except pdfium.PdfiumError as exc:
            self._errors.append(str(exc))
            return ""
        return recognize(image)

    def close(self) -> None:
        if self._over_limit:
            log.warning(
                "OCR stopped after %d pages (ocr.max_pages); %d scanned pages left out",
                self._options.ocr_max_pages,
                self._over_limit,
            )
        if self._document is not None:
            self._document.close()

    def why_empty(self) -> str:
        """The LoadError message for a PDF in which neither text layer nor OCR found text."""
        if not self._options.ocr:
            return "no text layer (scanned PDF?): needs OCR, which is turned off (ocr.enabled)"
        if self._too_large:
            return f"pages hold images over the {MAX_PIXELS // 1_000_000} megapixel limit"
        if self._errors:
            return f"cannot render the PDF's pages for OCR: {self._errors[0]}"
        return "no text found (no text layer, and OCR found none)"

    def _open(self) -> pdfium.PdfDocument:
        if self._document is None:
            self._document = pdfium.PdfDocument(self._data)
        return self._document


def _largest_image_pixels(page: pdfium.PdfPage) -> int:
    """Pixels of the page's largest embedded image, read from its header (nothing decoded)."""
    largest = 0
    for item in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2):
        width, height = item.get_px_size()
        largest = max(largest, width * height)
    return largest
