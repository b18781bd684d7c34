"""`kbqa serve`: the HTTP API and web page, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from kbqa.cli.common import ConfigOption, HomeOption, command, stderr


def register(app: typer.Typer) -> None:
    """Add `serve` to the kbqa app."""
    app.command()(serve)


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default server.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port to listen on (default server.port, 8000)."),
    ] = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the API (ours, ChatGLM2 api.py's and OpenAI's) and the web page over HTTP."""
    from kbqa.server.app import create_app, prepare
    from kbqa.server.runner import serve as run_server

    with command(home, config) as run:
        settings = run.settings
        if host is not None:  # /mcp checks the Host header only on a loopback address
            server = settings.server.model_copy(update={"host": host})
            settings = settings.model_copy(update={"server": server})
        web_app = create_app(settings)
        stderr.print(f"loading the model ({settings.llm.backend} backend)…", highlight=False)
        prepare(web_app)  # here, so that a model that fails to load is one clear line
    run_server(web_app, settings.server.host, port or settings.server.port)
