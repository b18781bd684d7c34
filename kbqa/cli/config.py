"""`kbqa config show`: the effective settings, secrets masked, as TOML or JSON."""

from __future__ import annotations

from typing import Any

import typer

from kbqa.cli.common import (
    ConfigOption,
    HomeOption,
    JsonOption,
    command,
    stdout,
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
    from kbqa.ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS

    with command(home, config, json_out) as run:
        data = run.settings.model_dump(mode="json")
        if data["server"]["api_key"]:
            data["server"]["api_key"] = "***"
        if data["storage"]["database"]:
            from kbqa.storage.pg_pool import redact

            data["storage"]["database"] = redact(data["storage"]["database"])
        formats = {
            "supported": sorted(SUPPORTED_EXTENSIONS),
            "unstructured": sorted(LONG_TAIL_EXTENSIONS),
        }
        run.show(data | {"formats": formats}, _print_settings)


def _print_settings(shown: dict[str, Any]) -> None:
    """The settings as TOML; the file types as comments, so the output stays a config.toml."""
    import tomli_w

    data = {section: value for section, value in shown.items() if section != "formats"}
    formats = shown["formats"]
    through = (
        " ".join(formats["unstructured"]) or "none (install the `unstructured` extra for more)"
    )
    stdout.print(
        f"{tomli_w.dumps(data)}\n# file types read: {' '.join(formats['supported'])}\n"
        f"# of them through unstructured: {through}",
        markup=False,
        highlight=False,
    )
