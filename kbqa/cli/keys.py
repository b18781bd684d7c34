"""`kbqa keys create|list|revoke`: the scoped API keys of a home (see kbqa.keys)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    command,
    fail,
    stderr,
    stdout,
)

keys_app = typer.Typer(help="Manage the server's scoped API keys.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `keys` command group to the kbqa app."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A name to list and revoke the key by.")],
    scope: Annotated[
        str, typer.Option("--scope", help="read (ask, search, view), write (+ documents), admin.")
    ] = "read",
    kb: Annotated[
        list[str] | None,
        typer.Option("--kb", help="Limit the key to this knowledge base; repeat for several."),
    ] = None,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key; it is printed once and only its digest is kept."""
    from kbqa.keys import KeyStore

    with command(home, config, json_out) as run:
        record, key = KeyStore(run.settings.home).create(name, scope, kb)
        kbs = record.to_json()["kbs"]
        run.show(
            {"name": record.name, "key": key, "scope": record.scope, "kbs": kbs}, _print_created
        )


def _print_created(created: dict[str, Any]) -> None:
    """The key alone on stdout (for `$(kbqa keys create …)`); what it is on stderr."""
    stdout.print(created["key"], markup=False, highlight=False)
    where = ", ".join(created["kbs"]) if created["kbs"] is not None else "all knowledge bases"
    stderr.print(
        f"key {created['name']!r} ({created['scope']}, {where}) created; "
        "it is shown only this once.",
        markup=False,
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    json_out: JsonOption = False, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """List the keys (names, scopes, knowledge bases; never the keys themselves)."""
    from kbqa.keys import KeyStore

    with command(home, config, json_out) as run:
        records = KeyStore(run.settings.home).records()
        run.show({"keys": [r.to_json() for r in records]}, _print_keys)


def _print_keys(result: dict[str, Any]) -> None:
    table = Table("name", "scope", "knowledge bases", "created")
    for r in result["keys"]:
        kbs = ", ".join(r["kbs"]) if r["kbs"] is not None else "(all)"
        table.add_row(r["name"], r["scope"], kbs, r["created_at"])
    stdout.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: a running server refuses it from its next request on."""
    from kbqa.keys import KeyStore

    with command(home, config, json_out) as run:
        if not KeyStore(run.settings.home).revoke(name):
            raise fail(f"no key named {name!r}")
        run.show(
            {"revoked": name},
            lambda _: stdout.print(f"revoked {name}", markup=False, highlight=False),
        )
