"""`kbqa docs list|remove`: the documents of a knowledge base (see kbqa.kb_admin)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    KbOption,
    command,
    fail,
    stdout,
)

docs_app = typer.Typer(help="Manage the documents of a knowledge base.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `docs` command group to the kbqa app."""
    app.add_typer(docs_app, name="docs")


@docs_app.command("list")
def docs_list(
    kb: KbOption = "default",
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """List the documents of a knowledge base."""
    from kbqa.kb_admin import list_documents

    with command(home, config, json_out) as run:
        run.show({"documents": list_documents(run.settings, kb)}, _print_documents)


def _print_documents(result: dict[str, Any]) -> None:
    table = Table("doc_id", "source", "chunks")
    for doc in result["documents"]:
        table.add_row(doc["doc_id"], doc["source"], str(doc["chunks"]))
    stdout.print(table)


@docs_app.command("remove")
def docs_remove(
    document: Annotated[str, typer.Argument(help="A doc_id or the document's file path.")],
    kb: KbOption = "default",
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove one document from a knowledge base."""
    from kbqa.kb_admin import remove_document

    with command(home, config, json_out) as run:
        removed = remove_document(run.settings, kb, document)
        if not removed:
            raise fail(f"no document {document} in knowledge base {kb}")
        run.show({"removed": removed}, lambda _: stdout.print(f"removed {document}"))
