"""What every kbqa command shares: options, settings, output, errors mapped to exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

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

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


class CliState:
    """Options given before the command (`kbqa --home DIR ingest …`)."""

    home: Path | None = None
    config: Path | None = None


def settings_for(home: Path | None, config: Path | None) -> Settings:
    """Validated settings; a command's own --home/--config win over the global ones."""
    return load_settings(home or CliState.home, config or CliState.config)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one line to stderr and return the Exit to raise."""
    stderr.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can cause become one line on stderr and an exit status, never a traceback."""
    from ingest.pipeline import IngestUsageError
    from kbqa.errors import KBQAError
    from kbqa.llm.errors import LLMUnavailable
    from storage.embeddings import EmbeddingUnavailable
    from storage.errors import (
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


@contextmanager
def unexpected_errors() -> Iterator[None]:
    """A bug becomes one line, `error: unexpected <Type>: …`, and exit 1 (docs/cli.md)."""
    try:
        yield
    except (typer.Exit, KeyboardInterrupt):
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
