"""`kbqa docs list|remove`: the documents of a knowledge base (see kbqa.kb_admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    KbOption,
    fail,
    print_json,
    settings_for,
    stdout,
    user_errors,
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

    with user_errors():
        documents = list_documents(settings_for(home, config), kb)
    if json_out:
        print_json({"documents": documents})
        return
    table = Table("doc_id", "source", "chunks")
    for doc in documents:
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

    with user_errors():
        removed = remove_document(settings_for(home, config), kb, document)
    if not removed:
        raise fail(f"no document {document} in knowledge base {kb}")
    if json_out:
        print_json({"removed": removed})
    else:
        stdout.print(f"removed {document}")
