"""`kbqa config show`: the effective settings, secrets masked, as TOML or JSON."""

from __future__ import annotations

import typer

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    print_json,
    settings_for,
    stdout,
    user_errors,
)

config_app = typer.Typer(help="Inspect the settings.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `config` command group to the kbqa app."""
    app.add_typer(config_app, name="config")


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
