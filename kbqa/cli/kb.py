"""`kbqa kb list|delete|check|migrate`: manage the knowledge bases (see kbqa.kb_admin)."""

from __future__ import annotations

import sys
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
    fail,
    stdout,
)

kb_app = typer.Typer(help="Manage knowledge bases.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `kb` command group to the kbqa app."""
    app.add_typer(kb_app, name="kb")


@kb_app.command("list")
def kb_list(
    json_out: JsonOption = False, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """List knowledge bases."""
    from kbqa.kb_admin import list_kbs

    with command(home, config, json_out) as run:
        run.show({"kbs": list_kbs(run.settings)}, _print_kbs)


def _print_kbs(result: dict[str, Any]) -> None:
    table = Table("name", "backend", "embedding", "documents", "chunks", "min_relevance")
    for item in result["kbs"]:
        table.add_row(
            item["name"],
            item["backend"],
            item["embedding"],
            str(item["documents"]),
            str(item["chunks"]),
            f"{item['min_relevance']}" + (" (calibrated)" if item["calibrated"] else ""),
        )
    stdout.print(table)


@kb_app.command("delete")
def kb_delete(
    name: Annotated[str | None, typer.Argument(help="Knowledge base to delete.")] = None,
    kb: Annotated[str | None, typer.Option("--kb", help="Knowledge base to delete.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a knowledge base and everything stored in it."""
    from kbqa.storage.config import delete_kb
    from kbqa.storage.names import validate_kb_name

    if (name is None) == (kb is None):
        raise fail("give the knowledge base either as NAME or as --kb NAME")
    name = name or kb or ""
    with command(home, config, json_out) as run:
        validate_kb_name(name)
        if not yes and sys.stdin.isatty() and not typer.confirm(f"Delete knowledge base {name}?"):
            raise typer.Exit(EXIT_OK)
        delete_kb(run.settings, name)
        run.show({"deleted": name}, lambda result: stdout.print(f"deleted {result['deleted']}"))


@kb_app.command("check")
def kb_check(
    kb: KbOption = "default",
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Check a knowledge base for damage; exit 0 when healthy, 1 when damaged."""
    from kbqa.kb_admin import check_kb

    with command(home, config, json_out) as run:
        problems = check_kb(run.settings, kb)
        run.show({"kb": kb, "healthy": not problems, "problems": problems}, _print_check)
    raise typer.Exit(EXIT_PARTIAL if problems else EXIT_OK)


def _print_check(result: dict[str, Any]) -> None:
    for problem in result["problems"]:
        stdout.print(f"[red]✗[/] {problem}", highlight=False)
    if result["healthy"]:
        stdout.print(f"[green]✓[/] {result['kb']} is healthy")


@kb_app.command("migrate")
def kb_migrate(
    kb: KbOption = "default",
    to: Annotated[str, typer.Option("--to", help="Name of the new knowledge base.")] = "",
    backend: Annotated[str, typer.Option(help="Backend of the new KB: faiss or milvus.")] = "faiss",
    to_database: Annotated[
        str,
        typer.Option(
            "--to-database",
            help="Copy into this PostgreSQL database (postgresql://…), or back into the SQLite "
            "files of the home with `sqlite`; --to defaults to the KB's own name.",
        ),
    ] = "",
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Copy a knowledge base into a new one (another backend or database) without re-embedding."""
    from kbqa.kb_admin import migrate_kb

    to = to or (kb if to_database else "")
    if not to:
        raise fail("--to NAME is required")
    if backend not in ("faiss", "milvus"):
        raise fail(f"unknown backend {backend!r}: use faiss or milvus")
    if to_database and to_database != "sqlite" and not to_database.startswith("postgres"):
        raise fail(f"--to-database must be a postgresql:// URL or sqlite, got {to_database!r}")
    with command(home, config, json_out) as run:
        result = migrate_kb(run.settings, kb, to, backend, to_database or None)
        run.show(result, _print_migrated)


def _print_migrated(result: dict[str, Any]) -> None:
    stdout.print(
        f"copied {result['documents']} documents ({result['chunks']} chunks) to {result['to']}"
    )
