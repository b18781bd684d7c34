"""`kbqa search QUERY`: the chunks most relevant to a query, or to each line of --queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    KbsOption,
    TopKOption,
    command,
    fail,
    stdout,
)

SEARCH_TOP_K = 5
"""Hits shown without -k: search's own default, the same as POST /v1/kbs/{kb}/search's."""


def register(app: typer.Typer) -> None:
    """Add `search` to the kbqa app."""
    app.command()(search)


def search(
    query: Annotated[str | None, typer.Argument(help="What to look for.")] = None,
    kb: KbsOption = None,
    top_k: TopKOption = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="A file with one query per line.")
    ] = None,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Show the chunks most relevant to a query (keyword and dense search, fused)."""
    from kbqa.retrieval import Retriever, hit_json

    if (query is None) == (queries is None):
        raise fail("give either a QUERY or --queries FILE")
    with command(home, config, json_out or queries is not None) as run:  # a file: JSON lines
        retriever = Retriever(run.settings)
        kbs = kb or ["default"]
        for text in _read_queries(queries) if queries else [query or ""]:
            if not text.strip():
                raise fail("the query is empty")
            hits = retriever.search(text, kbs, top_k or SEARCH_TOP_K)
            run.show({"query": text, "results": [hit_json(hit) for hit in hits]}, _print_hits)


def _read_queries(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read queries file {path}: {e}") from None
    return [line for line in lines if line.strip()]


def _print_hits(result: dict[str, Any]) -> None:
    if not result["results"]:
        stdout.print("no results")
    for rank, hit in enumerate(result["results"], 1):
        where = hit["source"] + (f" p.{hit['page']}" if hit["page"] else "")
        if hit["heading"]:
            where += f" › {hit['heading']}"
        stdout.print(
            f"[bold]{rank}.[/] [cyan]{where}[/]  score {hit['score']:.3f}", highlight=False
        )
        stdout.print(hit["text"].strip()[:500], markup=False, highlight=False)
        stdout.print()
