"""Checks of what a file claims to hold, made before a parser trusts it.

A zip-based document (docx, xlsx, pptx) is judged by its central directory: the sizes there
are what Python's zipfile will inflate each member to at most (it stops at the declared size
and fails the CRC check past it), so a member that lies about its size cannot grow beyond it.
The messages name the setting that would let the file through.
"""

from __future__ import annotations

import io
import zipfile

from kbqa.ingest.types import LoadError, ParseLimits

TOO_LARGE = "too_large"

RATIO_FLOOR_BYTES = 1 << 20
"""Members smaller than this are never refused for their ratio: they cannot blow anything up,
and small XML parts (styles, shared strings of a sparse sheet) compress very well."""


def check_archive(data: bytes, limits: ParseLimits) -> None:
    """Refuse a zip whose members unpack to more than the limits allow (LoadError too_large).

    A file that is not a readable zip passes: its loader reports it as corrupt, as before.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    unpacked = sum(member.file_size for member in members)
    if unpacked > limits.max_unpacked_mb * 2**20:
        raise LoadError(
            f"unpacks to {unpacked / 2**20:.1f} MB, over the {limits.max_unpacked_mb:g} MB limit "
            "(ingest.max_unpacked_mb)",
            code=TOO_LARGE,
        )
    for member in members:
        if member.file_size < RATIO_FLOOR_BYTES:
            continue
        ratio = member.file_size / max(member.compress_size, 1)
        if ratio > limits.max_compression_ratio:
            raise LoadError(
                f"{member.filename} is compressed {ratio:.0f} to 1, over the "
                f"{limits.max_compression_ratio:g} to 1 limit (ingest.max_compression_ratio): "
                "a zip bomb?",
                code=TOO_LARGE,
            )


def check_pages(pages: int, limits: ParseLimits) -> None:
    """Refuse a document of more pages than `ingest.max_pages` (LoadError too_large)."""
    if pages > limits.max_pages:
        raise LoadError(
            f"has {pages} pages, over the {limits.max_pages} page limit (ingest.max_pages)",
            code=TOO_LARGE,
        )


def pixels_error(limits: ParseLimits, size: tuple[int, int] | None = None) -> LoadError:
    """The error for an image of more pixels than `ingest.max_image_pixels` (size if known)."""
    what = f"image is {size[0]}×{size[1]} pixels" if size else "image has too many pixels"
    return LoadError(
        f"{what}, over the {limits.max_image_pixels:,} pixel limit (ingest.max_image_pixels): "
        "a decompression bomb?",
        code=TOO_LARGE,
    )
