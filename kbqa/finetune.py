"""`kbqa finetune` as a plain function: pick the base model, read the pairs, train the
prefix (kbqa.chatglm.train), evaluate it on a held-out split; the CLI only parses and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kbqa.chatglm.chatglm2 import ChatGLM2
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer
from kbqa.chatglm.train import (
    Example,
    StepReport,
    TrainConfig,
    Trainer,
    TrainingError,
    encode_examples,
)
from kbqa.errors import UsageError
from kbqa.finetune_data import pairs_from_kb, read_pairs, read_references, split_holdout
from kbqa.finetune_eval import evaluate_held_out
from kbqa.jsonlines import BadLine
from kbqa.llm.chatglm2 import check_checkpoint
from kbqa.settings import Settings

Quantize = Literal["int4", "int8", "none"]
_FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class FinetuneRequest:
    out: Path
    data: Path | None = None
    model: Path | None = None  # None: llm.chatglm2.path
    device: str | None = None  # None: llm.chatglm2.device
    quantize: Quantize | None = None  # None: as llm.chatglm2.dtype says
    prompt_column: str = "prompt"
    response_column: str = "response"
    from_kb: str | None = None
    questions: Path | None = None
    max_tokens: int = 256
    held_out: float = 0.0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


@dataclass
class Pairs:
    examples: list[Example]
    bad_lines: list[BadLine]
    no_context: list[str] = field(default_factory=list)


def read_training_pairs(
    request: FinetuneRequest, settings: Settings, tokenizer: ChatGLM2Tokenizer
) -> Pairs:
    if (request.from_kb is None) != (request.questions is None):
        raise UsageError("--from-kb and --questions go together")
    if request.from_kb is not None and request.questions is not None:
        if request.data is not None:
            raise UsageError("give either a training file or --from-kb with --questions")
        references, bad = read_references(request.questions)
        built = pairs_from_kb(
            settings, request.from_kb, references, tokenizer.count_tokens, request.max_tokens
        )
        if not built.examples:
            raise UsageError(f"knowledge base {request.from_kb} holds no context for any question")
        return Pairs(built.examples, bad, built.no_context)
    if request.data is None:
        raise UsageError("give a training file, or --from-kb with --questions")
    examples, bad = read_pairs(request.data, request.prompt_column, request.response_column)
    return Pairs(examples, bad)


def _base_choice(request: FinetuneRequest, settings: Settings) -> tuple[Path, str, str]:
    """(checkpoint folder, device, settings-style dtype) after the request's overrides."""
    chosen = settings.llm.chatglm2
    path = request.model if request.model is not None else Path(chosen.path)
    device = request.device or chosen.device
    dtype: str = chosen.dtype
    if request.quantize in ("int4", "int8"):
        dtype = request.quantize
    elif request.quantize == "none" and dtype in ("int4", "int8"):
        dtype = "fp16"
    if not device.startswith("cuda") and dtype in ("fp16", "bf16"):
        dtype = "fp32"  # half precision training is a CUDA feature here
    return path, device, dtype


def load_base(request: FinetuneRequest, settings: Settings) -> tuple[ChatGLM2, ChatGLM2Tokenizer]:
    """The frozen base and its tokenizer; LLMUnavailable (one line) when it cannot load."""
    from kbqa.llm.errors import LLMUnavailable

    path, device, dtype = _base_choice(request, settings)
    folder = check_checkpoint(path, dtype, device)
    quantize = dtype if dtype in ("int4", "int8") else None
    torch_dtype = _FLOAT_DTYPES.get(dtype, torch.float16)
    if quantize and not device.startswith("cuda"):
        torch_dtype = torch.float32  # quantized weights, fp32 activations on the CPU
    try:
        tokenizer = ChatGLM2Tokenizer.from_pretrained(folder)
        model = ChatGLM2.from_pretrained(folder, device, torch_dtype, quantize)
    except (ValueError, OSError, RuntimeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LLMUnavailable(f"cannot load ChatGLM2 from {folder}: {first_line}") from exc
    if tokenizer.vocab_size > model.config.padded_vocab_size:
        raise LLMUnavailable(
            f"{folder}: tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.padded_vocab_size}"
        )
    return model, tokenizer


def finetune(
    request: FinetuneRequest,
    settings: Settings,
    on_step: Callable[[StepReport], None] | None = None,
    on_bad_lines: Callable[[list[BadLine]], None] | None = None,
) -> dict[str, Any]:
    """Train and return the summary `kbqa finetune --json` prints."""
    try:
        config = TrainConfig(out=request.out, **request.train)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if request.max_tokens < 8:
        raise UsageError(f"--max-tokens must be at least 8, got {request.max_tokens}")
    model, tokenizer = load_base(request, settings)
    pairs = read_training_pairs(request, settings, tokenizer)
    if on_bad_lines is not None and pairs.bad_lines:
        on_bad_lines(pairs.bad_lines)
    train, held = split_holdout(pairs.examples, request.held_out, config.seed)
    encoding = encode_examples(tokenizer, train, request.max_tokens)
    try:
        request.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {request.out}: {e.strerror or e}") from None
    try:
        trainer = Trainer(model, encoding.samples, config, tokenizer.pad_id, on_step)
        result = trainer.run()
    except TrainingError as e:
        raise UsageError(str(e)) from None
    summary: dict[str, Any] = {
        "out": str(result.out),
        "steps": result.steps,
        "first_loss": round(result.first_loss, 4),
        "last_loss": round(result.last_loss, 4),
        "samples_per_s": round(result.samples_per_s, 2),
        "samples": len(encoding.samples),
        "truncated": encoding.truncated,
        "skipped_lines": [b.to_json() for b in pairs.bad_lines],
    }
    if pairs.no_context:
        summary["no_context"] = len(pairs.no_context)
    if held:
        summary["held_out"] = evaluate_held_out(
            model, tokenizer, held, request.max_tokens
        ).to_json()
    return summary
