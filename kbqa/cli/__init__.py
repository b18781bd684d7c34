"""The `kbqa` command line: thin commands over the same functions the HTTP server calls.

`app` is the Typer app and `run` the console script (kbqa/cli/main.py builds both).
"""

from kbqa.cli.main import app, run

__all__ = ["app", "run"]
