"""`kbqa eval`: measure a knowledge base on a file of questions (see kbqa.evaluation)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    TextColumn,
)
from rich.table import Table

from kbqa.cli.common import (
    EXIT_PARTIAL,
    ConfigOption,
    HomeOption,
    JsonOption,
    KbsOption,
    TopKOption,
    command,
    fail,
    stderr,
    stdout,
    warn_skipped_lines,
)
from kbqa.cli.progress import TerminalBar


class EvalProgress(TerminalBar):
    """Questions done, elapsed time and the estimated time left; silent when disabled."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        super().__init__(console, "eval", TextColumn("questions"), enabled=enabled, eta=True)

    def __call__(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)


def register(app: typer.Typer) -> None:
    """Add `eval` to the kbqa app."""
    app.command("eval")(eval_command)


def eval_command(
    file: Annotated[
        Path,
        typer.Argument(
            help='JSON lines {"question", "facts"?, "sources"?, "unanswerable"?, "history"?}.'
        ),
    ],
    kb: KbsOption = None,
    retrieval_only: Annotated[
        bool,
        typer.Option("--retrieval-only", help="Skip the LLM: retrieval and refusal only."),
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate", help="Choose and store the KB's own min_relevance from the file."
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write an HTML report with plots into this folder."),
    ] = None,
    top_k: TopKOption = None,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Measure retrieval, refusal, answers and citations on a file of questions."""
    from kbqa.evaluation.cases import read_cases
    from kbqa.evaluation.evaluate import evaluate

    with command(home, config, json_out) as run:
        settings = run.settings
        cases, bad_lines = read_cases(file)
        warn_skipped_lines(file, bad_lines)
        with EvalProgress(stderr, enabled=sys.stderr.isatty()) as progress:
            evaluation = evaluate(
                settings,
                cases,
                kb or ["default"],
                bad_lines=bad_lines,
                retrieval_only=retrieval_only,
                calibrate_kb=calibrate,
                top_k=top_k,
                progress=progress,
            )
        result = evaluation.to_json()
        if report is not None:
            from kbqa.evaluation.report import write_report

            try:
                result["report"] = str(write_report(evaluation, report))
            except OSError as e:
                why = e.strerror or e
                raise fail(f"cannot write the report into {report}: {why}") from None
        run.show(result, _print_result)
    if bad_lines:
        raise typer.Exit(EXIT_PARTIAL)


def _print_result(result: dict[str, Any]) -> None:
    from kbqa.evaluation.metrics import metric_table

    headings, rows = metric_table(result)
    table = Table("metric", *headings, title=f"kbqa eval — {result['n']} questions")
    for group, name, shown in rows:
        table.add_row(f"{group} {name}", *shown)
    table.add_row("min_relevance", str(result["min_relevance"]))
    if "calibrated_min_relevance" in result:
        point = result["calibration"]["at_threshold"]
        table.add_row(
            "calibrated min_relevance (stored)",
            f"{result['calibrated_min_relevance']} — keeps {point['answerable_kept']:.0%} of "
            f"answerable, refuses {point['unanswerable_refused']:.0%} of unanswerable",
        )
    stdout.print(table)
    failed = result["failed"]
    if failed:
        stdout.print(f"[bold]{len(failed)} questions failed[/]:")
        for item in failed[:20]:
            label = item["id"] or f"line {item['line']}"
            stdout.print(
                f"  {label}: {item['question']} — {'; '.join(item['problems'])}",
                markup=False,
                highlight=False,
            )
        if len(failed) > 20:
            stdout.print(f"  … and {len(failed) - 20} more (see --json or --report)")
    if "report" in result:
        stdout.print(f"report: {result['report']}", markup=False, highlight=False)
