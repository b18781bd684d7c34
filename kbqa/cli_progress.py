"""A terminal progress bar for ingests: files done, chunks written, the page being read."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class IngestProgress:
    """Implements ingest.pipeline.Progress; draws nothing when disabled (pipes, --json)."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self._enabled = enabled
        self._chunks = 0
        self._bar = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files · {task.fields[chunks]} chunks · {task.fields[current]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self._task = self._bar.add_task("ingest", total=None, chunks=0, current="")

    def __enter__(self) -> IngestProgress:
        self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def start(self, files: int) -> None:
        self._bar.update(self._task, total=files)

    def file_done(self, path: str, status: str, chunks: int) -> None:
        self._chunks += chunks
        self._bar.update(self._task, advance=1, chunks=self._chunks, current=f"{status} {path}")

    def page_done(self, path: str, page: int, pages: int) -> None:
        """OCR takes seconds a page: say which page of which file is being read."""
        if page < pages:
            self._bar.update(self._task, current=f"page {page + 1}/{pages} of {path}")
