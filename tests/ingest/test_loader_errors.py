"""Bad input: each class gets one clear line (LoadError), never a traceback or a crash."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from ingest_documents import MAX_BYTES, docx_bytes, error_of, pdf_bytes, xlsx_bytes
from reportlab.lib.pdfencrypt import StandardEncryption

from kbqa.ingest.loaders import load_document
from kbqa.ingest.types import LoadError, LoadOptions, UnsupportedFormat


@pytest.mark.parametrize("name", ["a.txt", "a.md", "a.html", "a.pdf", "a.docx", "a.csv", "a.json"])
def test_empty_file(write, name: str) -> None:
    assert error_of(write(name, b"")) == "empty file"


def test_whitespace_only_file_is_empty(write) -> None:
    assert error_of(write("blank.txt", " \n\t\n")) == "empty file"


def test_markdown_with_only_headings_has_no_text(write) -> None:
    assert error_of(write("h.md", "# Title\n## Sub\n")) == "no text found"


@pytest.mark.parametrize("name", ["image.txt", "image.md", "image.csv", "image.json", "a.html"])
def test_binary_behind_a_text_extension(write, name: str) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)) * 8
    assert error_of(write(name, png)) == "binary content, not text"


def test_control_characters_without_nul_are_binary(write) -> None:
    data = bytes([1, 2, 3, 4, 5, 6, 7, 8, 14, 15, 16, 17, 18, 19, 20]) * 100
    assert error_of(write("ctrl.txt", data)) == "binary content, not text"


def test_unsupported_extension_is_its_own_error(write) -> None:
    with pytest.raises(UnsupportedFormat, match=r"unsupported file type '\.exe'"):
        load_document(write("tool.exe", b"MZ\x90\x00"), max_bytes=MAX_BYTES)
    with pytest.raises(UnsupportedFormat, match="no extension"):
        load_document(write("Makefile", b"all:"), max_bytes=MAX_BYTES)


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as file:
        file.truncate(80 * 2**20)  # sparse: no 80 MB written
    assert error_of(path, max_bytes=50 * 2**20) == "file is 80.0 MB, over the 50 MB limit"


def test_small_limit_is_reported_in_bytes(write) -> None:
    assert (
        error_of(write("a.txt", "x" * 20), max_bytes=10)
        == "file is 20 bytes, over the 10 bytes limit"
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path / "gone.txt") == "file not found"
    (tmp_path / "folder.md").mkdir()
    assert "directory" in error_of(tmp_path / "folder.md")


def test_permission_error_becomes_load_error(write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("secret.txt", "text")

    def deny(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)
    assert error_of(path) == "permission denied: cannot read the file"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_unreadable_file(write) -> None:
    path = write("secret.txt", "text")
    path.chmod(0)
    try:
        assert error_of(path) == "permission denied: cannot read the file"
    finally:
        path.chmod(0o600)


def test_encrypted_pdf(write) -> None:
    data = pdf_bytes([["secret text"]], StandardEncryption("user-pass", ownerPassword="owner"))
    assert error_of(write("locked.pdf", data)) == "encrypted PDF: needs a password"


def test_pdf_without_text_layer_or_text_to_ocr(write) -> None:
    data = pdf_bytes([[], []])
    with pytest.raises(LoadError) as caught:  # OCR'd at 72 DPI: its result is known, only faster
        load_document(write("scan.pdf", data), max_bytes=MAX_BYTES, options=LoadOptions(ocr_dpi=72))
    assert str(caught.value) == "no text found (no text layer, and OCR found none)"


@pytest.mark.parametrize(
    "data",
    [
        pdf_bytes([["page one"], ["page two"]])[:700],  # truncated mid-stream
        b"%PDF-1.7\n" + b"not really a pdf " * 50,
        b"\x00\x01garbage without a header",
    ],
    ids=["truncated", "garbage-after-header", "no-header"],
)
def test_corrupt_pdf(write, data: bytes) -> None:
    assert error_of(write("broken.pdf", data)).startswith("corrupt PDF")


def _zip_without(data: bytes, member_prefix: str) -> bytes:
    """A copy of an Office zip with some members left out: a valid zip, a broken document."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            if not item.filename.startswith(member_prefix):
                target.writestr(item, source.read(item))
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("cut.docx", docx_bytes()[:1000], "corrupt DOCX"),
        ("parts.docx", _zip_without(docx_bytes(), "word/document"), "corrupt DOCX"),
        ("text.docx", b"plain text renamed to .docx", "corrupt DOCX"),
        ("cut.xlsx", xlsx_bytes()[:1000], "corrupt XLSX"),
        ("parts.xlsx", _zip_without(xlsx_bytes(), "xl/worksheets"), "corrupt XLSX"),
        ("word.xlsx", docx_bytes(), "corrupt XLSX"),
    ],
)
def test_corrupt_office_files(write, name: str, data: bytes, expected: str) -> None:
    assert error_of(write(name, data)).startswith(expected)


def test_invalid_json_names_the_line(write) -> None:
    message = error_of(write("bad.json", '{\n  "a": 1,\n  "b": \n}\n'))
    assert message.startswith("invalid JSON at line 4, column 1")


def test_invalid_jsonl_names_the_line(write) -> None:
    message = error_of(write("bad.jsonl", '{"a": 1}\n\n{"a": 2,}\n'))
    assert message.startswith("invalid JSON on line 3")


def test_json_without_text(write) -> None:
    assert error_of(write("empty.json", "{}")) == "no text found"


def test_csv_with_only_empty_cells(write) -> None:
    assert error_of(write("empty.csv", ",,\n,,\n")) == "no text found"


def test_deeply_nested_json_is_a_load_error(write) -> None:
    assert "nested" in error_of(write("deep.json", "[" * 100_000 + "]" * 100_000))
