"""Scans through the whole ingest: OCR'd text is stored with its page numbers, and a front end
that listens for pages hears of each one."""

from __future__ import annotations

from pathlib import Path

from ocr_documents import image_bytes, scanned_pdf_bytes, text_image

from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings
from kbqa.storage.kb import KnowledgeBase


class RecordingProgress:
    """The pipeline's Progress with the optional per-page method."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def start(self, files: int) -> None:
        self.events.append(("start", str(files)))

    def file_done(self, path: str, status: str, chunks: int) -> None:
        self.events.append(("file", path, status))

    def page_done(self, path: str, page: int, pages: int) -> None:
        self.events.append(("page", path, f"{page}/{pages}"))


def test_scanned_pdf_and_image_are_stored_with_pages(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    pages = [text_image(["第一页：备份在每晚两点。"]), text_image(["Page two: restore with kbqa."])]
    (docs / "scan.pdf").write_bytes(scanned_pdf_bytes(pages))
    (docs / "photo.png").write_bytes(image_bytes(text_image(["Whiteboard: ship on Friday"]), "PNG"))
    settings = load_settings(tmp_path / "home")
    progress = RecordingProgress()

    report = ingest_paths(settings, "scans", [docs], progress=progress)

    assert (report.added, report.failed) == (2, [])
    # Files are embedded in groups, so a file is reported added once its group is stored:
    # each file's pages in order, then its own "added"; files may interleave.
    assert progress.events[0] == ("start", "2") and len(progress.events) == 6
    for name, pages in (("photo.png", ["1/1"]), ("scan.pdf", ["1/2", "2/2"])):
        own = [event for event in progress.events[1:] if event[1] == name]
        assert own == [("page", name, page) for page in pages] + [("file", name, "added")]
    with KnowledgeBase.open(settings.kbs_dir, "scans") as kb:
        stored = {
            (info.source, chunk.page, chunk.text)
            for info in kb.documents()
            for chunk in kb.document(info.doc_id)[1]  # type: ignore[index]
        }
    assert stored == {
        ("photo.png", None, "Whiteboard: ship on Friday"),
        ("scan.pdf", 1, "第一页：备份在每晚两点。"),
        ("scan.pdf", 2, "Page two: restore with kbqa."),
    }
