"""Ingest throughput, as behaviour: small files' chunks are embedded together, a re-ingest with
nothing changed neither reads nor embeds, and the progress front end hears of every chunk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kbqa.ingest.pipeline
from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import Settings, load_settings
from kbqa.storage.embeddings import Embedder

NOTES = [
    "Backups of the Harbor cluster are kept for {n} days before they are deleted.",
    "年假：员工入职满 {n} 年后，每年享有带薪年假。",
    "The release train leaves every {n} weeks; hotfixes go out on Thursdays.",
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"note{i:02d}.txt").write_text(NOTES[i % 3].format(n=i + 2))
    return docs


class Recorder:
    """A Progress front end that records what it hears."""

    def __init__(self) -> None:
        self.files: list[tuple[str, str, int]] = []
        self.embedded: list[tuple[int, int]] = []

    def start(self, files: int) -> None:
        self.total = files

    def file_done(self, path: str, status: str, chunks: int) -> None:
        self.files.append((path, status, chunks))

    def chunks_embedded(self, count: int, left: int) -> None:
        self.embedded.append((count, left))


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of texts of every Embedder.embed call."""
    calls: list[int] = []
    original = Embedder.embed

    def spy(self: Embedder, texts: list[str], **kwargs: object) -> object:
        calls.append(len(texts))
        return original(self, texts, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Embedder, "embed", spy)
    return calls


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the pipeline hashes (reads whole)."""
    paths: list[Path] = []
    original = kbqa.ingest.pipeline._hash_file

    def spy(path: Path, max_bytes: int) -> str:
        paths.append(path)
        return original(path, max_bytes)

    monkeypatch.setattr(kbqa.ingest.pipeline, "_hash_file", spy)
    return paths


def test_small_files_are_embedded_together(
    settings: Settings, folder: Path, embed_calls: list[int]
) -> None:
    progress = Recorder()
    report = ingest_paths(settings, "default", [folder], progress=progress)
    assert report.added == 30 and report.chunks == 30
    assert embed_calls == [30], "one call for every file's chunk, not one per file"
    assert sorted(p for p, _, _ in progress.files) == sorted(f.name for f in folder.iterdir())
    assert {(s, c) for _, s, c in progress.files} == {("added", 1)}
    assert sum(count for count, _ in progress.embedded) == 30
    assert progress.embedded[-1][1] == 0, "the last event says nothing is left"


def test_a_reingest_with_nothing_changed_reads_and_embeds_nothing(
    settings: Settings, folder: Path, embed_calls: list[int], reads: list[Path]
) -> None:
    ingest_paths(settings, "default", [folder])
    embed_calls.clear()
    reads.clear()
    progress = Recorder()
    report = ingest_paths(settings, "default", [folder], progress=progress)
    assert (report.added, report.updated, report.unchanged, report.chunks) == (0, 0, 30, 0)
    assert embed_calls == [] and reads == [] and progress.embedded == []
    assert {s for _, s, _ in progress.files} == {"unchanged"}


def test_a_touched_file_is_read_again_but_not_embedded(
    settings: Settings, folder: Path, embed_calls: list[int], reads: list[Path]
) -> None:
    ingest_paths(settings, "default", [folder])
    embed_calls.clear()
    reads.clear()
    touched = folder / "note05.txt"
    os.utime(touched, (1_000_000_000, 1_000_000_000))  # mtime changed, content the same
    report = ingest_paths(settings, "default", [folder])
    assert (report.unchanged, report.updated, report.chunks) == (30, 0, 0)
    assert reads == [touched.resolve()] and embed_calls == []


def test_quick_check_trusts_size_and_mtime_and_can_be_turned_off(
    settings: Settings, folder: Path
) -> None:
    ingest_paths(settings, "default", [folder])
    edited = folder / "note08.txt"
    before = edited.stat()
    text = edited.read_text()
    assert "weeks" in text
    edited.write_text(text.replace("weeks", "WEEKS"))  # same size
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` would
    report = ingest_paths(settings, "default", [folder])
    assert (report.updated, report.unchanged) == (0, 30), "size and mtime say unchanged"
    settings.ingest.quick_check = False
    report = ingest_paths(settings, "default", [folder])
    assert (report.updated, report.unchanged) == (1, 29), "the content hash sees the edit"
