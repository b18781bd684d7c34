"""The kbqa command line run in this process, through the real Typer app (Typer's CliRunner),
for the tests of what a command prints and exits with."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from kbqa.cli import app

runner = CliRunner()


def kbqa(home: Path, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """`kbqa --home HOME ARGS…` with `input` on stdin: its exit status, stdout and stderr.

    The command maps every error to a line and an exit status; anything else escaping it is
    raised here, so that a test sees the traceback a user would have seen."""
    result = runner.invoke(app, ["--home", str(home), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
