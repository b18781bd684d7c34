"""The `kbqa` app: the global options, every command's registration, and the console script.

Each command lives in the module of its name (`kbqa ingest` in kbqa/cli/ingest.py, `kbqa kb …`
in kbqa/cli/kb.py); kbqa/cli/common.py holds what they share.
"""

from __future__ import annotations

import sys

import typer

from kbqa.cli import answer, docs, eval, finetune, ingest, kb, keys, mcp, search, serve
from kbqa.cli import config as config_commands  # `config` is also the --config option's name
from kbqa.cli.common import (
    ABORTS,
    EXIT_USAGE,
    USAGE_ERRORS,
    CliState,
    ConfigOption,
    HomeOption,
    stderr,
    stdout,
)

app = typer.Typer(
    name="kbqa",
    help="Answer questions from your own documents with a local LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(home: HomeOption = None, config: ConfigOption = None) -> None:
    """kbqa: local knowledge-base question answering."""
    CliState.home = home
    CliState.config = config


COMMANDS = (kb, docs, config_commands, ingest, search, answer, serve, eval, finetune, keys, mcp)
for command in COMMANDS:
    command.register(app)


def run() -> None:
    """The console script: like `app()`, but usage errors are one line too (docs/cli.md)."""
    if len(sys.argv) <= 1:
        app()  # prints the help
    try:
        code = app(standalone_mode=False)
    except ABORTS:
        sys.exit(130)
    except USAGE_ERRORS as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":  # a command group without its command
            # Its message is the group's help. Typer's rich help prints itself while the error
            # is built and leaves the message empty: printing it again would show it twice.
            if message:
                stdout.print(message, markup=False, highlight=False)
        else:
            stderr.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    sys.exit(code if isinstance(code, int) else 0)
