"""What every kbqa command shares: options, settings, output, errors mapped to exit codes.

A command parses its arguments, then runs its body in `command(...)`, which gives it the
settings and the output mode and turns every error into one stderr line and an exit status:

    with command(home, config, json_out) as run:
        result = list_documents(run.settings, kb)
        run.show({"documents": result}, _print_documents)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console

from kbqa.jsonlines import BadLine
from kbqa.settings import Settings, SettingsError, load_settings

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="kbqa home folder (default $KBQA_HOME or ~/.kbqa)."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file (default $KBQA_HOME/config.toml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KbOption = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]
KbsOption = Annotated[
    list[str] | None,
    typer.Option("--kb", help="Knowledge base name; repeat to use several."),
]
# None = the command's default: retrieval.top_k for ask, chat and eval; search keeps its own
# 5 (as POST /v1/kbs/{kb}/search does), which predates the setting's default of 4.
TopKOption = Annotated[
    int | None,
    typer.Option(
        "-k",
        "--top-k",
        min=1,
        max=100,
        help="Chunks to retrieve (default retrieval.top_k; search: 5).",
    ),
]

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")


class CliState:
    """Options given before the command (`kbqa --home DIR ingest …`)."""

    home: Path | None = None
    config: Path | None = None


def settings_for(home: Path | None, config: Path | None) -> Settings:
    """Validated settings; a command's own --home/--config win over the global ones."""
    return load_settings(home or CliState.home, config or CliState.config)


class Run:
    """What a command's body gets from `command(...)`: the settings and the output mode."""

    def __init__(self, home: Path | None, config: Path | None, json_out: bool) -> None:
        self._home = home
        self._config = config
        self.json = json_out

    @cached_property
    def settings(self) -> Settings:
        """Loaded on first use, so a command may check its own arguments first; inside the
        command's frame, so a bad setting is one line and exit 2."""
        return settings_for(self._home, self._config)

    def show(self, value: T, render: Callable[[T], None]) -> None:
        """`value` as one JSON line with --json; else `render` draws it for a person."""
        if self.json:
            print_json(value)
        else:
            render(value)


@contextmanager
def command(home: Path | None, config: Path | None, json_out: bool = False) -> Iterator[Run]:
    """The frame every command's body runs in (docs/cli.md, "Errors" and "Exit status").

    Errors a user can cause become `error: <message>` and their exit status;
    anything else, a bug, becomes `error: unexpected <Type>: …` and exit 1; never a traceback.
    Long-running loops that handle their own errors (chat's prompt, serve, --watch) run after it.
    """
    with _unexpected_errors(), _user_errors():
        yield Run(home, config, json_out)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    stderr.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can cause become one line on stderr and an exit status, never a traceback."""
    from kbqa.errors import KBQAError
    from kbqa.ingest.pipeline import IngestUsageError
    from kbqa.llm.errors import LLMUnavailable
    from kbqa.storage.embeddings import EmbeddingUnavailable
    from kbqa.storage.errors import (
        EmbeddingMismatch,
        InvalidKBName,
        KBDamaged,
        KBExists,
        KBNotFound,
        StorageError,
    )

    usage = (
        SettingsError,
        IngestUsageError,
        InvalidKBName,
        KBNotFound,
        KBExists,
        EmbeddingMismatch,
        EmbeddingUnavailable,
    )
    try:
        yield
    except typer.Exit:
        raise
    except usage as e:
        raise fail(str(e), EXIT_USAGE) from None
    except KBQAError as e:
        raise fail(str(e), e.exit_code) from None
    except LLMUnavailable as e:
        raise fail(str(e), EXIT_USAGE) from None
    except (KBDamaged, StorageError) as e:
        raise fail(str(e), EXIT_PARTIAL) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


# Recent Typer releases carry their own copy of Click; older ones raise Click's own classes.
# main.run reports these (a bad option, Ctrl-C at a confirmation prompt), so they pass through.
USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
ABORTS = (click.exceptions.Abort, typer.Abort)


@contextmanager
def _unexpected_errors() -> Iterator[None]:
    """A bug becomes one line, `error: unexpected <Type>: …`, and exit 1 (docs/cli.md)."""
    try:
        yield
    except (typer.Exit, KeyboardInterrupt, *ABORTS, *USAGE_ERRORS):
        raise
    except Exception as e:
        raise fail(f"unexpected {type(e).__name__}: {e}", EXIT_PARTIAL) from None


def warn_skipped_lines(file: Path | None, bad: Sequence[BadLine]) -> None:
    """One warning line on stderr for each malformed line of a JSON-lines input file."""
    for line in bad:
        stderr.print(
            f"warning: {file}: line {line.line} skipped: {line.error}",
            markup=False,
            highlight=False,
        )
