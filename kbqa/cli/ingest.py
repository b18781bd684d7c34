"""`kbqa ingest PATH...`: sync files and folders into a knowledge base (see kbqa.ingest.pipeline).

With --watch the command keeps syncing afterwards (kbqa.cli.watch).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kbqa.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    ConfigOption,
    HomeOption,
    JsonOption,
    KbOption,
    command,
    print_json,
    stderr,
    stdout,
)
from kbqa.errors import UsageError


def register(app: typer.Typer) -> None:
    """Add `ingest` to the kbqa app."""
    app.command()(ingest)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    kb: KbOption = "default",
    embedding: Annotated[
        str | None,
        typer.Option(help="Embedding model, fixed when the KB is created."),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Storage backend: faiss or milvus.")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Then keep syncing on every change, until Ctrl-C.")
    ] = False,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Add new files, replace changed ones and remove vanished ones from a knowledge base."""
    from kbqa.cli.progress import IngestProgress
    from kbqa.ingest.pipeline import ingest_paths

    with command(home, config, json_out) as run:
        with _ingest_failure_json(kb, json_out):
            settings = run.settings
            if backend is not None and backend not in ("faiss", "milvus"):
                raise UsageError(f"unknown backend {backend!r}: use faiss or milvus")
            show_progress = not json_out and sys.stderr.isatty()
            with IngestProgress(stderr, enabled=show_progress) as progress:
                report = ingest_paths(
                    settings, kb, paths, embedding=embedding, backend=backend, progress=progress
                )
        run.show(report.to_json(), _print_ingest_report)
    if watch:
        from kbqa.cli.watch import follow

        raise typer.Exit(follow(settings, kb, paths, json_out=json_out))
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


@contextmanager
def _ingest_failure_json(kb: str, json_out: bool) -> Iterator[None]:
    """With --json, a run that fails as a whole still prints one object: `{"kb", "error"}`.

    The error then goes on to the command's frame (stderr line, exit status) as for any command.
    """
    try:
        yield
    except KeyboardInterrupt:
        if json_out:
            print_json({"kb": kb, "error": "interrupted"})
        raise
    except Exception as e:
        if json_out:
            print_json({"kb": kb, "error": str(e) or type(e).__name__})
        raise


def _print_ingest_report(report: dict[str, Any]) -> None:
    stdout.print(
        f"[bold]{report['kb']}[/]: {report['added']} added, {report['updated']} updated, "
        f"{report['unchanged']} unchanged, {report['removed']} removed, "
        f"{report['chunks']} chunks written in {report['seconds']:.1f} s"
    )
    if report["skipped"]:
        stdout.print(f"{len(report['skipped'])} skipped (unsupported type)")
    if report["failed"]:
        table = Table("file", "error", title="Failed files", title_style="bold red")
        for item in report["failed"]:
            table.add_row(item["path"], item["error"])
        stdout.print(table)
