"""`kbqa finetune`: P-tuning v2 training of ChatGLM2's prefix (see kbqa.finetune)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    TextColumn,
)

from kbqa.cli.common import (
    EXIT_PARTIAL,
    ConfigOption,
    HomeOption,
    JsonOption,
    command,
    stderr,
    stdout,
    warn_skipped_lines,
)
from kbqa.cli.progress import TerminalBar

if TYPE_CHECKING:
    from kbqa.chatglm.train import StepReport


class TrainProgress(TerminalBar):
    """Steps done, the last loss, samples/s and the time left; silent when disabled."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        columns = TextColumn("steps  loss {task.fields[loss]}  {task.fields[speed]} samples/s")
        super().__init__(
            console, "finetune", columns, enabled=enabled, eta=True, loss="—", speed="—"
        )

    def __call__(self, report: StepReport) -> None:
        self._bar.update(
            self._task,
            completed=report.step,
            total=report.steps,
            loss=f"{report.loss:.4f}",
            speed=f"{report.samples_per_s:.2f}",
        )


def register(app: typer.Typer) -> None:
    """Add `finetune` to the kbqa app."""
    app.command("finetune")(finetune_command)


def finetune_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the P-tuning checkpoint(s).")],
    data: Annotated[
        Path | None,
        typer.Argument(help='JSON lines {"prompt", "response", "history"?}.'),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="ChatGLM2 checkpoint folder (default llm.chatglm2.path)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Default llm.chatglm2.device.")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help="int4, int8 or none (default: llm.chatglm2.dtype)."),
    ] = None,
    pre_seq_len: Annotated[int, typer.Option("--pre-seq-len", min=1, max=4096)] = 128,
    projection: Annotated[
        bool, typer.Option("--projection", help="Train the prefix through an MLP.")
    ] = False,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 100,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 2e-2,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Samples per step.")] = 16,
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", min=0, help="Samples per forward; 0: --batch.")
    ] = 0,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens",
            min=8,
            help="Longest sample in tokens (prompt + answer); longer are cut.",
        ),
    ] = 256,
    save_every: Annotated[int, typer.Option("--save-every", min=0)] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Recompute activations in the backward.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Go on from OUT's newest checkpoint-N, if any.")
    ] = False,
    compile_block: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="On CUDA, fuse the float base's per-layer work with torch.compile.",
        ),
    ] = True,
    held_out: Annotated[
        float,
        typer.Option("--held-out", min=0.0, max=0.9, help="Share of pairs kept to evaluate."),
    ] = 0.0,
    prompt_column: Annotated[str, typer.Option("--prompt-column")] = "prompt",
    response_column: Annotated[str, typer.Option("--response-column")] = "response",
    from_kb: Annotated[
        str | None, typer.Option("--from-kb", help="Build prompts from this KB's context.")
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help='With --from-kb: {"question", "answer"} lines.'),
    ] = None,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Train a P-tuning v2 prefix for ChatGLM2 on question-answer pairs."""
    from kbqa.errors import UsageError
    from kbqa.finetune import FinetuneRequest, finetune

    with command(home, config, json_out) as run:
        if quantize not in (None, "int4", "int8", "none"):
            raise UsageError(f"--quantize must be int4, int8 or none, got {quantize!r}")
        settings = run.settings
        request = FinetuneRequest(
            out=out,
            data=data,
            model=model,
            device=device,
            quantize=quantize,  # type: ignore[arg-type]
            prompt_column=prompt_column,
            response_column=response_column,
            from_kb=from_kb,
            questions=questions,
            max_tokens=max_tokens,
            held_out=held_out,
            train={
                "steps": steps,
                "batch_size": batch,
                "micro_batch": micro_batch,
                "lr": lr,
                "pre_seq_len": pre_seq_len,
                "prefix_projection": projection,
                "save_every": save_every,
                "seed": seed,
                "recompute": recompute,
                "compile": compile_block,
                "resume": resume,
            },
        )
        with TrainProgress(stderr, enabled=sys.stderr.isatty()) as progress:
            summary = finetune(
                request,
                settings,
                on_step=progress,
                on_bad_lines=lambda bad: warn_skipped_lines(questions or data, bad),
            )
        run.show(summary, _print_summary)
    if summary["skipped_lines"]:
        raise typer.Exit(EXIT_PARTIAL)


def _print_summary(summary: dict[str, Any]) -> None:
    stdout.print(
        f"trained {summary['steps']} steps on {summary['samples']} samples "
        f"({summary['truncated']} truncated): loss {summary['first_loss']} → "
        f"{summary['last_loss']}, {summary['samples_per_s']} samples/s",
        markup=False,
        highlight=False,
    )
    if "no_context" in summary:
        stdout.print(f"{summary['no_context']} questions had no context in the KB (not used)")
    if "held_out" in summary:
        held = summary["held_out"]
        stdout.print(
            f"held out ({held['n']}): loss {held['loss']}, ROUGE-L {held['rouge_l']}, "
            f"exact match {held['exact_match']}",
            markup=False,
            highlight=False,
        )
    stdout.print(
        f"checkpoint: {summary['out']} (set llm.chatglm2.ptuning_checkpoint to use it)",
        markup=False,
        highlight=False,
    )
