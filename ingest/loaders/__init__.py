"""File → Sections, by extension, offline, with one clear LoadError line per bad file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kbqa.ingest.limits import TOO_LARGE, check_archive
from kbqa.ingest.loaders import longtail
from kbqa.ingest.loaders.delimited import load_csv
from kbqa.ingest.loaders.encoding import read_text
from kbqa.ingest.loaders.excel import load_xlsx
from kbqa.ingest.loaders.html import load_html
from kbqa.ingest.loaders.image import load_image
from kbqa.ingest.loaders.jsondoc import load_json, load_jsonl
from kbqa.ingest.loaders.pdf import load_pdf
from kbqa.ingest.loaders.slides import load_pptx
from kbqa.ingest.loaders.text import load_markdown, load_txt
from kbqa.ingest.loaders.word import load_docx
from kbqa.ingest.types import LoadError, LoadOptions, Section, UnsupportedFormat

__all__ = [
    "IMAGE_EXTENSIONS",
    "LONG_TAIL_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "LoadOptions",
    "load_document",
    "read_text",
    "register_loader",
]

Loader = Callable[[bytes, LoadOptions], list[Section]]


def _plain(loader: Callable[[bytes], list[Section]]) -> Loader:
    """A loader that needs no options (every format that is never OCR'd)."""
    return lambda data, _options: loader(data)


IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
)
_LOADERS: dict[str, Loader] = {
    ".txt": _plain(load_txt),
    ".md": _plain(load_markdown),
    ".markdown": _plain(load_markdown),
    ".html": _plain(load_html),
    ".htm": _plain(load_html),
    ".pdf": load_pdf,
    ".docx": _plain(load_docx),
    ".pptx": _plain(load_pptx),
    ".csv": _plain(load_csv),
    ".xlsx": _plain(load_xlsx),
    ".json": _plain(load_json),
    ".jsonl": _plain(load_jsonl),
} | dict.fromkeys(IMAGE_EXTENSIONS, load_image)
LONG_TAIL_EXTENSIONS: frozenset[str] = frozenset(longtail.available())
"""What the `unstructured` extra reads here (.epub .odt .rtf .rst .org .eml .msg, .doc .ppt
with LibreOffice); empty without it. See kbqa.ingest.loaders.longtail."""
_LOADERS |= {ext: longtail.loader(module) for ext, module in longtail.available().items()}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_LOADERS)
ZIP_BASED: frozenset[str] = frozenset({".docx", ".xlsx", ".pptx", ".epub", ".odt"})
"""Zip archives (Office Open XML, EPUB, OpenDocument), checked against the unpacking limits
first."""


def register_loader(extension: str, loader: Loader) -> None:
    """Replace the loader of a supported extension (a module named in `ingest.loader_plugins`
    calls this when imported; the parse workers import those modules too)."""
    extension = extension.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise ValueError(f"{extension} is not a supported extension; a plugin can only replace")
    _LOADERS[extension] = loader


def load_document(
    path: Path, *, max_bytes: int, options: LoadOptions | None = None
) -> list[Section]:
    """The file's text as Sections; never empty: a file without text raises LoadError.

    Raises UnsupportedFormat for an extension not in SUPPORTED_EXTENSIONS and LoadError for
    files that are empty, too large, unreadable, binary, corrupt, encrypted or textless.
    """
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        kind = f"'{path.suffix}'" if path.suffix else "(no extension)"
        raise UnsupportedFormat(f"unsupported file type {kind}")
    data = _read(path, max_bytes)
    options = options or LoadOptions()
    try:
        if path.suffix.lower() in ZIP_BASED:
            check_archive(data, options.limits)
        sections = [s for s in loader(data, options) if s.text.strip()]
    except LoadError as exc:
        message = " ".join(str(exc).split())  # one line, whatever a library put in it
        if message == str(exc):
            raise
        raise type(exc)(message, code=exc.code) from exc
    except RecursionError as exc:
        raise LoadError("document too deeply nested (RecursionError)") from exc
    except MemoryError as exc:
        raise LoadError(
            "ran out of memory while parsing (limit: ingest.parse_memory_mb)", code="parse_memory"
        ) from exc
    except Exception as exc:  # one unforeseen failure must not stop an ingest of many files
        reason = " ".join(str(exc).split())[:200]
        raise LoadError(f"cannot read the file: {type(exc).__name__}: {reason}") from exc
    if not sections:
        raise LoadError("no text found")
    return sections


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise LoadError(_too_large(size, max_bytes), code=TOO_LARGE)
        with path.open("rb") as file:
            # Sized by the file, not the limit: read(n) allocates n bytes before reading, and
            # a parse worker's memory is capped (ingest.parse_memory_mb).
            data = file.read(size + 1)
            if len(data) > size:  # it grew since stat
                data += file.read(max_bytes + 1 - len(data))
    except PermissionError as exc:
        raise LoadError("permission denied: cannot read the file") from exc
    except IsADirectoryError as exc:
        raise LoadError("is a directory, not a file") from exc
    except FileNotFoundError as exc:
        raise LoadError("file not found") from exc
    except OSError as exc:
        raise LoadError(f"cannot read the file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise LoadError(_too_large(len(data), max_bytes), code=TOO_LARGE)
    if not data.strip():
        raise LoadError("empty file")
    return data


def _too_large(size: int, limit: int) -> str:
    return f"file is {_megabytes(size, 1)}, over the {_megabytes(limit, 0)} limit"


def _megabytes(size: int, decimals: int) -> str:
    """ "80.0 MB" / "50 MB"; limits under 1 MB (tests, tight settings) in KB or bytes."""
    mb = size / 2**20
    if mb >= 0.1 or size == 0:
        text = f"{mb:.{max(decimals, 0 if mb.is_integer() else 1)}f}"
        return f"{text} MB"
    if size >= 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size} bytes"
