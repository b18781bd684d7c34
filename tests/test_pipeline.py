"""Incremental sync of real files into a real KB with the bundled embedding model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbqa.ingest.pipeline import IngestUsageError, ingest_paths
from kbqa.kb_admin import check_kb, list_documents, remove_document
from kbqa.settings import Settings, load_settings
from kbqa.storage.errors import EmbeddingMismatch, InvalidKBName


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home")


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "install.md").write_text(
        "# 安装\n\nAurora 需要 Python 3.11。\n\n## 显存\n\nINT4 量化后显存需求约 6 GB。\n",
        encoding="utf-8",
    )
    (folder / "sub" / "notes.txt").write_text("The release is called Borealis.\n")
    (folder / "tool.exe").write_bytes(b"MZ\x90\x00")
    return folder


def sources(settings: Settings, kb: str = "default") -> set[str]:
    return {doc["source"] for doc in list_documents(settings, kb)}


def test_first_ingest_adds_supported_files_and_skips_others(settings: Settings, docs: Path) -> None:
    report = ingest_paths(settings, "default", [docs])
    assert (report.added, report.updated, report.unchanged, report.removed) == (2, 0, 0, 0)
    assert report.chunks >= 2
    assert report.skipped == [
        {"path": str(docs / "tool.exe"), "reason": "unsupported extension .exe"}
    ]
    assert sources(settings) == {"install.md", "sub/notes.txt"}
    assert check_kb(settings, "default") == []


def test_second_ingest_skips_unchanged_replaces_changed_removes_vanished(
    settings: Settings, docs: Path
) -> None:
    ingest_paths(settings, "default", [docs])
    before = {d["source"]: d["doc_id"] for d in list_documents(settings, "default")}
    (docs / "sub" / "notes.txt").write_text("The release is now called Aurora Prime.\n")
    (docs / "install.md").unlink()
    (docs / "new.txt").write_text("A brand new file.\n")
    report = ingest_paths(settings, "default", [docs])
    assert (report.added, report.updated, report.unchanged, report.removed) == (1, 1, 0, 1)
    assert sources(settings) == {"sub/notes.txt", "new.txt"}
    again = ingest_paths(settings, "default", [docs])
    assert (again.added, again.updated, again.unchanged, again.removed, again.chunks) == (
        0,
        0,
        2,
        0,
        0,
    )
    assert before.keys() != sources(settings)


def test_documents_from_elsewhere_are_untouched(
    settings: Settings, docs: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("Kept from another folder.\n")
    ingest_paths(settings, "default", [other])
    ingest_paths(settings, "default", [docs])
    (docs / "install.md").unlink()
    report = ingest_paths(settings, "default", [docs])
    assert report.removed == 1
    assert "keep.txt" in sources(settings)


def test_file_argument_root_is_its_parent(settings: Settings, docs: Path) -> None:
    report = ingest_paths(settings, "default", [docs / "sub" / "notes.txt"])
    assert report.added == 1
    assert sources(settings) == {"notes.txt"}
    documents = list_documents(settings, "default")
    assert documents[0]["path"] == str((docs / "sub" / "notes.txt").resolve())


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_folder_is_refused_and_removes_nothing(
    settings: Settings, docs: Path, tmp_path: Path, make: str
) -> None:
    ingest_paths(settings, "default", [docs])
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    with pytest.raises(IngestUsageError):
        ingest_paths(settings, "default", [target])
    assert sources(settings) == {"install.md", "sub/notes.txt"}


def test_failed_file_keeps_its_previous_version_and_the_rest_commits(
    settings: Settings, docs: Path
) -> None:
    ingest_paths(settings, "default", [docs])
    (docs / "sub" / "notes.txt").write_bytes(b"\x00\x01\x02binary" * 50)
    (docs / "more.md").write_text("# More\n\nMore text.\n")
    report = ingest_paths(settings, "default", [docs])
    assert report.added == 1
    assert [f["path"] for f in report.failed] == [str(docs / "sub" / "notes.txt")]
    assert "binary" in report.failed[0]["error"]
    assert sources(settings) == {"install.md", "sub/notes.txt", "more.md"}


def test_symlink_loop_ends(settings: Settings, docs: Path) -> None:
    os.symlink(docs, docs / "sub" / "loop")
    report = ingest_paths(settings, "default", [docs])
    assert report.added == 2


def test_huge_file_fails_before_reading(settings: Settings, docs: Path, tmp_path: Path) -> None:
    small = load_settings(tmp_path / "home", overrides={"ingest": {"max_file_mb": 0.0001}})
    (docs / "big.txt").write_text("x" * 1000)
    report = ingest_paths(small, "default", [docs / "big.txt"])
    assert report.added == 0
    assert "over the" in report.failed[0]["error"]
    assert settings.kbs_dir == small.kbs_dir


def test_explicit_different_embedding_is_refused(settings: Settings, docs: Path) -> None:
    ingest_paths(settings, "default", [docs])
    with pytest.raises(EmbeddingMismatch):
        ingest_paths(settings, "default", [docs], embedding="/some/other/model")
    assert ingest_paths(settings, "default", [docs], embedding="default").unchanged == 2


def test_invalid_kb_name_is_refused(settings: Settings, docs: Path) -> None:
    with pytest.raises(InvalidKBName):
        ingest_paths(settings, "../escape", [docs])
    assert not (settings.home / "escape").exists()


def test_remove_document_by_id_and_by_path(settings: Settings, docs: Path) -> None:
    ingest_paths(settings, "default", [docs])
    by_source = {d["source"]: d for d in list_documents(settings, "default")}
    assert remove_document(settings, "default", by_source["install.md"]["doc_id"]) == 1
    assert remove_document(settings, "default", str(docs / "sub" / "notes.txt")) == 1
    assert list_documents(settings, "default") == []
    assert remove_document(settings, "default", "no-such-id") == 0
