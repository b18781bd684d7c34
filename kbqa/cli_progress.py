"""Terminal progress bars: ingest (files, chunks, the page being read), eval and finetune build
on TerminalBar, which draws nothing when disabled (pipes, --json)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TerminalBar:
    """One transient rich bar named `name`: the name, a bar, done/total, `columns`, the time
    spent (and, with `eta`, the time left). `fields` are the task's initial extra fields."""

    def __init__(
        self,
        console: Console,
        name: str,
        *columns: ProgressColumn,
        enabled: bool,
        eta: bool = False,
        **fields: Any,
    ) -> None:
        time_left = (TextColumn("ETA"), TimeRemainingColumn()) if eta else ()
        self._bar = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            *columns,
            TimeElapsedColumn(),
            *time_left,
            console=console,
            transient=True,
            disable=not enabled,
        )
        self._task = self._bar.add_task(name, total=None, **fields)

    def __enter__(self) -> Self:
        self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.__exit__(exc_type, exc, tb)


class IngestProgress(TerminalBar):
    """Implements ingest.pipeline.Progress; draws nothing when disabled (pipes, --json)."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        columns = TextColumn("files · {task.fields[chunks]} chunks · {task.fields[current]}")
        super().__init__(console, "ingest", columns, enabled=enabled, chunks=0, current="")
        self._chunks = 0

    def start(self, files: int) -> None:
        self._bar.update(self._task, total=files)

    def file_done(self, path: str, status: str, chunks: int) -> None:
        self._chunks += chunks
        self._bar.update(self._task, advance=1, chunks=self._chunks, current=f"{status} {path}")

    def page_done(self, path: str, page: int, pages: int) -> None:
        """OCR takes seconds a page: say which page of which file is being read."""
        if page < pages:
            self._bar.update(self._task, current=f"page {page + 1}/{pages} of {path}")
