"""Client file names reduced to one harmless path component (kbqa.server.jobs.safe_filename)."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path

import pytest

from kbqa.server.errors import ApiError
from kbqa.server.jobs import MAX_NAME_BYTES, safe_filename, save_uploads


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("notes.md", "notes.md"),
        ("Report.PDF", "Report.PDF"),
        ("C:\\Users\\me\\plan.docx", "plan.docx"),
        ("../../../../etc/cron.d/job.txt", "job.txt"),
        ("//server/share/a.csv", "a.csv"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("..config.json", "config.json"),
        ("tab\tand\nnewline.md", "tabandnewline.md"),
        ("知识库说明.md", "知识库说明.md"),
    ],
)
def test_clean_names(raw: str, clean: str) -> None:
    assert safe_filename(raw) == clean


def test_names_are_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "café.md")
    assert safe_filename(decomposed) == unicodedata.normalize("NFC", "café.md")


def test_long_names_are_cut_keeping_the_extension() -> None:
    name = safe_filename("文" * 300 + ".txt")
    assert name.endswith(".txt") and len(name.encode()) <= MAX_NAME_BYTES


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "invalid_file_name"),
        ("", "invalid_file_name"),
        ("..", "invalid_file_name"),
        ("dir/", "invalid_file_name"),
        ("run.sh", "unsupported_type"),
        ("noext", "unsupported_type"),
    ],
)
def test_unusable_names(raw: str | None, code: str) -> None:
    with pytest.raises(ApiError) as refused:
        safe_filename(raw)
    assert refused.value.status == 422 and refused.value.code == code


class _Upload:
    def __init__(self, filename: str, data: bytes) -> None:
        self.filename = filename
        self.file = io.BytesIO(data)


def test_a_refused_upload_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "uploads" / "kb"
    folder.mkdir(parents=True)
    (folder / "keep.md").write_text("old")
    files = [_Upload("keep.md", b"new"), _Upload("big.md", b"x" * 2000)]
    with pytest.raises(ApiError) as refused:
        save_uploads(folder, files, max_bytes=1000)
    assert refused.value.status == 413
    assert sorted(p.name for p in folder.iterdir()) == ["keep.md"]
    assert (folder / "keep.md").read_text() == "old"


def test_duplicate_names_in_one_upload_are_refused(tmp_path: Path) -> None:
    files = [_Upload("a/x.md", b"1"), _Upload("b/x.md", b"2")]
    with pytest.raises(ApiError) as refused:
        save_uploads(tmp_path, files, max_bytes=1000)
    assert refused.value.code == "invalid_request" and not any(tmp_path.iterdir())
