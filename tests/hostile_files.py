"""Hostile files made at test time: each small on disk, huge or endless once parsed.

Shared by the ingest and the HTTP tests of the parse limits (kbqa.ingest.isolation,
kbqa.ingest.limits).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

from pypdf import PdfWriter

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    "</Types>"
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="word/document.xml"/>'
    "</Relationships>"
)
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
PARAGRAPH = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>"
STUCK_JSON = b'{"stuck": true}\n'
"""What makes tests/stuck_loader.py's JSON loader hang forever…"""
CRASH_JSON = b'{"crash": true}\n'
"""…and what makes it kill its own process."""


def held_json(release: Path) -> bytes:
    """A JSON file that tests/stuck_loader.py parses only once `release` exists: a parse the
    test ends when it chooses, so that what happens meanwhile needs no measured time."""
    return json.dumps({"hold_until": str(release)}).encode() + b"\n"


def docx_bomb(megabytes: int) -> bytes:
    """A .docx whose word/document.xml unpacks to `megabytes` MB of one paragraph repeated
    (deflate shrinks it about 300 times: 100 MB is a few hundred KB on disk)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _RELS)
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            part.write(f'<?xml version="1.0"?><w:document xmlns:w="{_W}"><w:body>'.encode())
            block = PARAGRAPH * (2**20 // len(PARAGRAPH))
            for _ in range(megabytes):
                part.write(block)
            part.write(b"</w:body></w:document>")
    return buffer.getvalue()


def png_bomb(side: int = 40_000) -> bytes:
    """A greyscale PNG of side × side pixels whose header alone says so: a few hundred bytes
    on disk (the pixel data is a token stream of zeros), 1.6 G pixels once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1)))  # one row; the rest is missing
        + chunk(b"IEND", b"")
    )


def blank_pdf(pages: int) -> bytes:
    """A PDF of `pages` blank pages (10,000 take about a second to write)."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(72, 72)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
