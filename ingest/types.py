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


class LoadError(Exception):
    """A file could not be turned into text; the message is one line for the user."""


class UnsupportedFormat(LoadError):
    """The file's extension is not one kbqa reads."""


@dataclass(frozen=True)
class LoadOptions:
    """How loaders may read a file: OCR limits and who hears about each page read.

    `on_page(done, total)` is called after each page of a paged document (PDF pages, image
    frames), so a front end can show progress on documents that take seconds a page to OCR.
    """

    ocr: bool = True
    ocr_max_pages: int = 100
    ocr_dpi: int = 200
    on_page: Callable[[int, int], None] | None = None

    def page_done(self, done: int, total: int) -> None:
        if self.on_page is not None:
            self.on_page(done, total)
