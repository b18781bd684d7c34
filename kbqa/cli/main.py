"""The `kbqa` command line: thin commands over the same functions the HTTP server calls."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from kbqa import cli_answer, cli_eval, cli_finetune, cli_keys, cli_mcp, cli_serve
from kbqa.cli_common import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    CliState,
    ConfigOption,
    HomeOption,
    JsonOption,
    KbOption,
    KbsOption,
    fail,
    print_json,
    settings_for,
    stderr,
    stdout,
    unexpected_errors,
    user_errors,
)
from kbqa.errors import UsageError

app = typer.Typer(
    name="kbqa",
    help="Answer questions from your own documents with a local LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kb_app = typer.Typer(help="Manage knowledge bases.", no_args_is_help=True)
docs_app = typer.Typer(help="Manage the documents of a knowledge base.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(docs_app, name="docs")
app.add_typer(config_app, name="config")


@app.callback()
def main(home: HomeOption = None, config: ConfigOption = None) -> None:
    """kbqa: local knowledge-base question answering."""
    CliState.home = home
    CliState.config = config


@app.command()
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
    from ingest.pipeline import ingest_paths
    from kbqa.cli_progress import IngestProgress

    with unexpected_errors(), user_errors(), _ingest_failure_json(kb, json_out):
        settings = settings_for(home, config)
        if backend is not None and backend not in ("faiss", "milvus"):
            raise UsageError(f"unknown backend {backend!r}: use faiss or milvus")
        show_progress = not json_out and sys.stderr.isatty()
        with IngestProgress(stderr, enabled=show_progress) as progress:
            report = ingest_paths(
                settings, kb, paths, embedding=embedding, backend=backend, progress=progress
            )
    if json_out:
        print_json(report.to_json())
    else:
        _print_ingest_report(report.to_json())
    if watch:
        from kbqa.cli_watch import follow

        raise typer.Exit(follow(settings, kb, paths, json_out=json_out))
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


@contextmanager
def _ingest_failure_json(kb: str, json_out: bool) -> Iterator[None]:
    """With --json, a run that fails as a whole still prints one object: `{"kb", "error"}`.

    The error then goes on to `user_errors` (stderr line, exit status) as for any command.
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


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="What to look for.")] = None,
    kb: KbsOption = None,
    top_k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=100)] = 5,
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
    with user_errors():
        settings = settings_for(home, config)
        retriever = Retriever(settings)
        kbs = kb or ["default"]
        for text in _read_queries(queries) if queries else [query or ""]:
            if not text.strip():
                raise fail("the query is empty")
            hits = retriever.search(text, kbs, top_k)
            result = {"query": text, "results": [hit_json(hit) for hit in hits]}
            if json_out or queries:
                print_json(result)
            else:
                _print_hits(result)


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


@kb_app.command("list")
def kb_list(
    json_out: JsonOption = False, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """List knowledge bases."""
    from kbqa.kb_admin import list_kbs

    with user_errors():
        kbs = list_kbs(settings_for(home, config))
    if json_out:
        print_json({"kbs": kbs})
        return
    table = Table("name", "backend", "embedding", "documents", "chunks", "min_relevance")
    for item in kbs:
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
    from storage.kb import KnowledgeBase
    from storage.names import validate_kb_name

    if (name is None) == (kb is None):
        raise fail("give the knowledge base either as NAME or as --kb NAME")
    name = name or kb or ""
    with user_errors():
        settings = settings_for(home, config)
        validate_kb_name(name)
        if not yes and sys.stdin.isatty() and not typer.confirm(f"Delete knowledge base {name}?"):
            raise typer.Exit(EXIT_OK)
        KnowledgeBase.delete(settings.kbs_dir, name, milvus_uri=settings.storage.milvus_uri or None)
    if json_out:
        print_json({"deleted": name})
    else:
        stdout.print(f"deleted {name}")


@kb_app.command("check")
def kb_check(
    kb: KbOption = "default",
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Check a knowledge base for damage; exit 0 when healthy, 1 when damaged."""
    from kbqa.kb_admin import check_kb

    with user_errors():
        problems = check_kb(settings_for(home, config), kb)
    if json_out:
        print_json({"kb": kb, "healthy": not problems, "problems": problems})
    elif problems:
        for problem in problems:
            stdout.print(f"[red]✗[/] {problem}", highlight=False)
    else:
        stdout.print(f"[green]✓[/] {kb} is healthy")
    raise typer.Exit(EXIT_PARTIAL if problems else EXIT_OK)


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
    with user_errors():
        settings = settings_for(home, config)
        result = migrate_kb(settings, kb, to, backend, to_database or None)
    if json_out:
        print_json(result)
    else:
        stdout.print(f"copied {result['documents']} documents ({result['chunks']} chunks) to {to}")


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


@config_app.command("show")
def config_show(
    json_out: JsonOption = False, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """Print the effective settings (file + environment overrides)."""
    with user_errors():
        settings = settings_for(home, config)
    data = settings.model_dump(mode="json")
    if data["server"]["api_key"]:
        data["server"]["api_key"] = "***"
    if data["storage"]["database"]:
        from storage.pg_pool import redact

        data["storage"]["database"] = redact(data["storage"]["database"])
    from ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS

    formats = sorted(SUPPORTED_EXTENSIONS)
    long_tail = sorted(LONG_TAIL_EXTENSIONS)
    if json_out:
        print_json(data | {"formats": {"supported": formats, "unstructured": long_tail}})
    else:
        import tomli_w

        # Comments, so that the output stays a valid config.toml.
        through = " ".join(long_tail) or "none (install the `unstructured` extra for more)"
        stdout.print(
            f"{tomli_w.dumps(data)}\n# file types read: {' '.join(formats)}\n"
            f"# of them through unstructured: {through}",
            markup=False,
            highlight=False,
        )


cli_answer.register(app, lambda: settings_for(None, None))
cli_serve.register(app, lambda: settings_for(None, None))
cli_eval.register(app)
cli_finetune.register(app)
cli_keys.register(app)
cli_mcp.register(app)


# Recent Typer releases carry their own copy of Click; older ones raise Click's own classes.
_USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
_ABORTS = (click.exceptions.Abort, typer.Abort)


def run() -> None:
    """The console script: like `app()`, but usage errors are one line too (docs/cli.md)."""
    if len(sys.argv) <= 1:
        app()  # prints the help
    try:
        code = app(standalone_mode=False)
    except _ABORTS:
        sys.exit(130)
    except _USAGE_ERRORS as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        context = getattr(e, "ctx", None)
        if not message and context is not None:  # a command group without its command
            stdout.print(context.get_help(), markup=False, highlight=False)
        else:
            stderr.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    sys.exit(code if isinstance(code, int) else 0)
