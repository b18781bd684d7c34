"""`kbqa serve`: the HTTP API and web page, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from kbqa.cli.common import ConfigOption, HomeOption, command, stderr
from kbqa.errors import ConfigError
from kbqa.settings import ChatGLM2Settings, Settings


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
    tensor_parallel: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=16,
            help="Split ChatGLM2 over N GPUs by tensor parallelism, one process each "
            "(default llm.chatglm2.tensor_parallel, 1).",
        ),
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
        if tensor_parallel is not None:
            settings = with_tensor_parallel(settings, tensor_parallel)
        web_app = create_app(settings)
        ranks = settings.llm.chatglm2.tensor_parallel
        over = f", {ranks} tensor-parallel ranks" if ranks > 1 else ""
        stderr.print(f"loading the model ({settings.llm.backend} backend{over})…", highlight=False)
        prepare(web_app)  # here, so that a model that fails to load is one clear line
    run_server(web_app, settings.server.host, port or settings.server.port)


def with_tensor_parallel(settings: Settings, ranks: int) -> Settings:
    """settings with llm.chatglm2.tensor_parallel = ranks, checked as the settings file's
    value is (ConfigError, exit 2: another backend, a layer split, batching off)."""
    if ranks > 1 and settings.llm.backend != "chatglm2":
        raise ConfigError(
            f"--tensor-parallel {ranks} needs llm.backend chatglm2, not {settings.llm.backend}"
        )
    fields = {**settings.llm.chatglm2.model_dump(), "tensor_parallel": ranks}
    try:
        chatglm2 = ChatGLM2Settings.model_validate(fields)
    except ValidationError as e:
        reason = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--tensor-parallel {ranks}: {reason}") from None
    llm = settings.llm.model_copy(update={"chatglm2": chatglm2})
    return settings.model_copy(update={"llm": llm})
