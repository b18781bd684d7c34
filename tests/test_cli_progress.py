"""The ingest progress line: files/s, chunks/s and an ETA, drawn on a terminal during a real
ingest (its content only; no timing is asserted)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from kbqa.cli.progress import IngestProgress, ingest_rates
from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings


def test_rates_and_eta_from_counts() -> None:
    line = ingest_rates(files=10, total=30, chunks=400, chunks_left=0, seconds=10.0)
    assert line == "1.0 files/s · 400 chunks · 40.0 chunks/s · ETA 0:00:20"
    # One large file: no file done yet, its chunks left at 40/s give the ETA.
    line = ingest_rates(files=0, total=1, chunks=400, chunks_left=4000, seconds=10.0)
    assert line == "0.0 files/s · 400 chunks · 40.0 chunks/s · ETA 0:01:40"
    assert ingest_rates(files=0, total=5, chunks=0, chunks_left=0, seconds=0.0).endswith(
        "ETA -:--:--"
    )


def test_the_terminal_line_during_an_ingest(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"n{i}.txt").write_text(f"Backups of cluster {i} are kept for {i + 3} days.")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    settings = load_settings(tmp_path / "home")
    with IngestProgress(console, enabled=True) as progress:
        ingest_paths(settings, "default", [docs], progress=progress)
        progress._bar.refresh()  # draw the final counts before the transient bar is erased
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "6/6 files" in drawn
    last = [line for line in drawn.splitlines() if "6/6" in line][-1]
    assert re.search(r"[\d.]+ files/s · 6 chunks · [\d.]+ chunks/s · ETA \d+:\d\d:\d\d", last)
    assert "added n" in last
