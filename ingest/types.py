"""Values passed between loaders, the splitter and the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A run of text from one place in a document, as a loader found it.

    `heading` is the heading path ("Chapter 1 > Install"), None where the format has none;
    `page` is 1-based for paged formats (PDF), None otherwise.
    """

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough to embed and to give to the model."""

    text: str
    page: int | None
    heading: str | None
    position: int
    """0-based order of the chunk within its document."""


class IngestUsageError(ValueError):
    """The ingest cannot start (a missing or empty folder, a loader plugin that cannot be
    imported, …); nothing was changed. Front ends report it as a usage error (exit 2)."""


class LoadError(Exception):
    """A file could not be turned into text; the message is one line for the user.

    `code` names the cause for machines (an ingest report's `error_code`): `too_large` for a
    file over a size, unpacked-size, compression-ratio, pixel or page limit, `parse_timeout`,
    `parse_memory` and `parse_crashed` for a parse stopped in its worker process, else
    `load_failed` (empty, binary, corrupt, encrypted or textless files).
    """

    code = "load_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedFormat(LoadError):
    """The file's extension is not one kbqa reads."""


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the work one file may cause, whatever it claims to hold (settings `ingest.*`).

    The defaults match the settings' defaults; the pipeline passes the configured values.
    """

    max_unpacked_mb: float = 300.0
    """Total size of a zip-based file's (docx, xlsx, pptx) members, from its central directory."""
    max_compression_ratio: float = 100.0
    """Uncompressed over compressed size of any member above 1 MB of a zip-based file."""
    max_image_pixels: int = 64_000_000
    """Pixels of an image (width × height)."""
    max_pages: int = 2000
    """Pages of a PDF."""


@dataclass(frozen=True)
class LoadOptions:
    """How loaders may read a file: OCR limits and who hears about each page read.

    `on_page(done, total)` is called after each page of a paged document (PDF pages, image
    frames), so a front end can show progress on documents that take seconds a page to OCR.
    """

    ocr: bool = True
    ocr_max_pages: int = 100
    ocr_dpi: int = 200
    limits: ParseLimits = ParseLimits()
    on_page: Callable[[int, int], None] | None = None

    def page_done(self, done: int, total: int) -> None:
        if self.on_page is not None:
            self.on_page(done, total)
