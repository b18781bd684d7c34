"""`kbqa keys create|list|revoke`: the scoped API keys of a home (see kbqa.keys)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    fail,
    print_json,
    settings_for,
    stderr,
    stdout,
    user_errors,
)

keys_app = typer.Typer(help="Manage the server's scoped API keys.", no_args_is_help=True)


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

    with user_errors():
        settings = settings_for(home, config)
        record, key = KeyStore(settings.home).create(name, scope, kb)
    if json_out:
        print_json(
            {"name": record.name, "key": key, "scope": record.scope, "kbs": record.to_json()["kbs"]}
        )
        return
    stdout.print(key, markup=False, highlight=False)
    where = ", ".join(record.kbs) if record.kbs is not None else "all knowledge bases"
    stderr.print(
        f"key {record.name!r} ({record.scope}, {where}) created; it is shown only this once.",
        markup=False,
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    json_out: JsonOption = False, home: HomeOption = None, config: ConfigOption = None
) -> None:
    """List the keys (names, scopes, knowledge bases; never the keys themselves)."""
    from kbqa.keys import KeyStore

    with user_errors():
        records = KeyStore(settings_for(home, config).home).records()
    if json_out:
        print_json({"keys": [r.to_json() for r in records]})
        return
    table = Table("name", "scope", "knowledge bases", "created")
    for r in records:
        table.add_row(
            r.name, r.scope, ", ".join(r.kbs) if r.kbs is not None else "(all)", r.created_at
        )
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

    with user_errors():
        removed = KeyStore(settings_for(home, config).home).revoke(name)
    if not removed:
        raise fail(f"no key named {name!r}")
    if json_out:
        print_json({"revoked": name})
    else:
        stdout.print(f"revoked {name}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `keys` command group to the kbqa app."""
    app.add_typer(keys_app, name="keys")
