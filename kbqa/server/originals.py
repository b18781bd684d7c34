"""A document's original file, as the source viewer serves it.

Only the path a KB records for a doc_id is ever opened: nothing from the request reaches the
file system. Ingest records resolved paths, so a recorded path that no longer resolves to
itself (a symlink put in its place, or in a parent's) is treated as gone, as is anything that
is not a regular file. The file is opened once and streamed from that descriptor: a file
deleted or replaced after the check is still served whole from what was opened, and its
length is the one announced in Content-Length.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

BLOCK_BYTES = 256 * 1024
"""Bytes read per streamed block: the most the server holds of a file at once."""

_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".csv": "text/csv",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
"""Types of the formats kbqa ingests, fixed here rather than read from the host's mime.types."""

ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml"}
)
"""Types a browser would run scripts in: served as attachments in a sandbox, never inline."""

SANDBOX_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def content_type(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(f"x{suffix}")[0] or "application/octet-stream"


@dataclass(frozen=True)
class FileState:
    available: bool
    size: int | None
    mtime: float | None


def file_state(path: str) -> FileState:
    """Whether the recorded path is still a regular file of its own (no symlink), and its stat."""
    try:
        if not os.path.isabs(path) or os.path.realpath(path) != path:
            return FileState(False, None, None)
        found = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in a path some older KB recorded
        return FileState(False, None, None)
    if not stat.S_ISREG(found.st_mode):
        return FileState(False, None, None)
    return FileState(True, found.st_size, found.st_mtime)


@dataclass
class OpenedFile:
    descriptor: int
    size: int

    def blocks(self) -> Iterator[bytes]:
        """The first `size` bytes, BLOCK_BYTES at a time; closes the file when done or dropped.

        Bytes appended after the open are not sent (they would break Content-Length)."""
        left = self.size
        try:
            while left > 0:
                block = os.read(self.descriptor, min(BLOCK_BYTES, left))
                if not block:
                    break  # truncated meanwhile: the client sees a short body, never a 500
                left -= len(block)
                yield block
        finally:
            os.close(self.descriptor)


def open_original(path: str) -> OpenedFile | None:
    """The recorded file opened for reading, or None when it is gone or not a plain file."""
    if not file_state(path).available:
        return None
    try:
        # O_NOFOLLOW: a symlink swapped in after the check is refused; O_NONBLOCK: a FIFO
        # swapped in does not hang the open (fstat below refuses it).
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    found = os.fstat(descriptor)
    if not stat.S_ISREG(found.st_mode):
        os.close(descriptor)
        return None
    return OpenedFile(descriptor, found.st_size)


def content_disposition(name: str, *, attachment: bool) -> str:
    """`inline|attachment; filename="ascii"; filename*=UTF-8''…` for any file name (RFC 6266).

    The ASCII fallback keeps letters, digits and harmless punctuation and replaces the rest
    (quotes, backslashes, `;`, controls, non-ASCII) with `_`; the UTF-8 form percent-encodes
    everything outside RFC 5987's attr-char, so neither can end the header or a parameter.
    """
    kind = "attachment" if attachment else "inline"
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")) or "file"
    fallback = "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in " .-_()[]+,") else "_" for ch in name
    )
    encoded = urllib.parse.quote(name, safe="!#$&+-.^_`|~", encoding="utf-8")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
