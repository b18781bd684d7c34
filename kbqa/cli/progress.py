"""Terminal progress bars: ingest (files, chunks, the page being read), eval and finetune build
on TerminalBar, which draws nothing when disabled (pipes, --json)."""

from __future__ import annotations

import time
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
    """Implements kbqa.ingest.pipeline.Progress; draws nothing when disabled (pipes, --json).

    The line: files done/total, files/s, chunks embedded, chunks/s, the file last done (or the
    page being read), the time spent and an ETA (see ingest_rates).
    """

    def __init__(self, console: Console, *, enabled: bool) -> None:
        columns = TextColumn("files · {task.fields[rates]} · {task.fields[current]}")
        super().__init__(console, "ingest", columns, enabled=enabled, rates="", current="")
        self._files = 0
        self._total = 0
        self._chunks = 0
        self._left = 0
        self._started = time.monotonic()

    def start(self, files: int) -> None:
        self._total = files
        self._started = time.monotonic()
        self._bar.update(self._task, total=files, rates=self._rates())

    def file_done(self, path: str, status: str, chunks: int) -> None:
        self._files += 1
        self._bar.update(self._task, advance=1, rates=self._rates(), current=f"{status} {path}")

    def chunks_embedded(self, count: int, left: int) -> None:
        """`count` more chunks embedded, `left` still to embed in this group of files (or one
        large file: its chunks/s and ETA move while no file finishes)."""
        self._chunks += count
        self._left = left
        self._bar.update(self._task, rates=self._rates())

    def page_done(self, path: str, page: int, pages: int) -> None:
        """OCR takes seconds a page: say which page of which file is being read."""
        if page < pages:
            self._bar.update(self._task, current=f"page {page + 1}/{pages} of {path}")

    def _rates(self) -> str:
        return ingest_rates(
            files=self._files,
            total=self._total,
            chunks=self._chunks,
            chunks_left=self._left,
            seconds=time.monotonic() - self._started,
        )


def ingest_rates(*, files: int, total: int, chunks: int, chunks_left: int, seconds: float) -> str:
    """`3.2 files/s · 412 chunks · 41.0 chunks/s · ETA 0:01:05` from the counts so far.

    The ETA is the larger of the files left at the files/s so far and the chunks left in the
    group being embedded at the chunks/s so far: one large file moves the second while the
    first waits for its end. `ETA -:--:--` until a rate is known.
    """
    files_rate = files / seconds if seconds > 0 else 0.0
    chunks_rate = chunks / seconds if seconds > 0 else 0.0
    left = []
    if files and files_rate > 0:
        left.append((total - files) / files_rate)
    if chunks_left and chunks_rate > 0:
        left.append(chunks_left / chunks_rate)
    eta = _clock(max(left)) if left else "-:--:--"
    return f"{files_rate:.1f} files/s · {chunks} chunks · {chunks_rate:.1f} chunks/s · ETA {eta}"


def _clock(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
