"""P-tuning v2 training of ChatGLM2's prefix encoder: the loop, its checkpoints and resume.

Samples are (prompt, response, history) rounds encoded with the tokenizer's own chat prompt
(`build_chat_input`, the one the served model sees), followed by the response and `</s>`;
only the response tokens carry loss. Each optimizer step takes `batch_size` samples in
micro-batches (gradient accumulation) and normalises by the step's response-token count, so
the micro-batch size changes memory, not the numbers.

Checkpoints are P-tuning folders as the official scripts write them (config.json and
pytorch_model.bin with `transformer.prefix_encoder.*`, see ptuning.py) plus
`training_state.pt` (step, optimizer, loss curve) for resuming: `OUT/checkpoint-N` every
`save_every` steps, and the last step in OUT itself, so `ptuning_checkpoint=OUT` loads it.
Sample order depends only on the seed and the step, so a resumed run sees the same batches
as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from kbqa.chatglm.checkpoint import BIN_SINGLE, read_tensors
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.prefix_tuning import IGNORE, attach_prefix, loss_sum
from kbqa.chatglm.ptuning import PREFIX, save_ptuning
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer, PromptTooLong

STATE_FILE = "training_state.pt"


class TrainingError(RuntimeError):
    """A training run that cannot go on (out of memory, a checkpoint that does not fit)."""


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    n_prompt: int  # the first n_prompt ids are the prompt (no loss)


@dataclass(frozen=True)
class Encoding:
    samples: list[Encoded]
    truncated: int  # samples cut to max_tokens


def encode_examples(
    tokenizer: ChatGLM2Tokenizer, examples: Sequence[Example], max_tokens: int
) -> Encoding:
    """Prompt ids + response ids + `</s>`, at most max_tokens each.

    A long sample first loses its oldest history rounds, then the start of its question (the
    end, `…答：`, is where the answer begins), then the end of its response; the response
    keeps at least half of the budget.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    samples, truncated = [], 0
    for example in examples:
        response = [*tokenizer.encode(example.response, add_prefix=False), tokenizer.eos_id]
        budget = max_tokens - min(len(response), max_tokens // 2)
        try:
            prompt = tokenizer.build_chat_input(example.prompt, example.history, budget)
        except PromptTooLong:
            full = tokenizer.build_chat_input(example.prompt)
            prompt = tokenizer.prefix_ids + full[len(full) - (budget - 2) :]
        full_prompt_kept = len(prompt) == len(
            tokenizer.build_chat_input(example.prompt, example.history)
        )
        kept = response[: max_tokens - len(prompt)]
        truncated += int(len(kept) < len(response) or not full_prompt_kept)
        samples.append(Encoded(prompt + kept, len(prompt)))
    return Encoding(samples, truncated)


def collate(samples: Sequence[Encoded], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded input_ids and labels [B, S]: causal attention never sees the padding
    before a real token, so no attention mask is needed."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, sample.n_prompt : n] = ids[row, sample.n_prompt : n]
    return ids, labels


@dataclass
class TrainConfig:
    out: Path
    steps: int = 100
    batch_size: int = 16  # samples per optimizer step
    micro_batch: int = 0  # samples per forward/backward; 0: the whole batch at once
    lr: float = 2e-2
    weight_decay: float = 0.0
    pre_seq_len: int = 128
    prefix_projection: bool = False
    save_every: int = 0  # also keep OUT/checkpoint-N every N steps; 0: only the last
    seed: int = 0
    recompute: bool = False  # activation checkpointing, layer by layer
    compile: bool = True  # fuse a float base's elementwise work with torch.compile (CUDA only)
    resume: bool = False  # go on from the newest OUT/checkpoint-N

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "pre_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch < 0 or self.save_every < 0 or not self.lr > 0:
            raise ValueError("micro_batch and save_every must be >= 0 and lr > 0")


@dataclass
class StepReport:
    step: int  # 1-based, out of steps
    steps: int
    loss: float
    samples_per_s: float


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # one per step, resumed ones included
    samples_per_s: float = 0.0  # of the steps run by this call

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def last_loss(self) -> float:
        return self.losses[-1]


def _order(n_samples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_samples, generator=generator).tolist()


def batch_indices(n_samples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The sample indices of optimizer step `step` (0-based): a fresh shuffle every epoch,
    a function of (seed, step) only, so resuming needs no data-loader state."""
    indices = []
    for g in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(g, n_samples)
        indices.append(_order(n_samples, seed, epoch)[pos])
    return indices


def _autocast(model: ChatGLM2Model) -> contextlib.AbstractContextManager[object]:
    """fp16/bf16 autocast on CUDA (the fp32 prefix encoder then runs in the base's dtype)."""
    if model.device.type == "cuda" and model.dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=model.dtype)
    return contextlib.nullcontext()


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear decay to zero over the run, as the official P-tuning script's scheduler."""
    return config.lr * (1 - step / config.steps)


def latest_checkpoint(out: Path) -> Path | None:
    found = [
        (int(p.name.removeprefix("checkpoint-")), p)
        for p in out.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


class Trainer:
    """Train model's prefix encoder on samples; `run()` returns the loss curve."""

    def __init__(
        self,
        model: ChatGLM2Model,
        samples: Sequence[Encoded],
        config: TrainConfig,
        pad_id: int,
        on_step: Callable[[StepReport], None] | None = None,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.model = model
        self.samples = list(samples)
        self.config = config
        self.pad_id = pad_id
        self.on_step = on_step
        self.encoder = attach_prefix(
            model, config.pre_seq_len, config.prefix_projection, config.seed
        )
        self.optimizer = torch.optim.AdamW(
            self.encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # fp16 gradients of the activations underflow without loss scaling; bf16's do not.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=model.device.type == "cuda" and model.dtype == torch.float16
        )
        self.compiled = config.compile and model.device.type == "cuda"
        self.step = 0
        self.losses: list[float] = []

    # -- checkpoints -----------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_ptuning(self.model, folder)
        state = {
            "step": self.step,
            "losses": self.losses,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": {k: v for k, v in asdict(self.config).items() if k != "out"},
        }
        torch.save(state, folder / STATE_FILE)

    def load(self, folder: Path) -> None:
        """Continue from a checkpoint folder written by save()."""
        state = torch.load(folder / STATE_FILE, weights_only=True)
        saved = state["config"]
        for key in ("pre_seq_len", "prefix_projection", "batch_size", "seed", "lr"):
            if saved[key] != getattr(self.config, key):
                raise TrainingError(
                    f"{folder}: saved with {key}={saved[key]!r}, "
                    f"this run has {getattr(self.config, key)!r}"
                )
        weights = {k.removeprefix(PREFIX): v for k, v in read_tensors(folder / BIN_SINGLE).items()}
        with torch.no_grad():
            for name, param in self.encoder.named_parameters():
                param.copy_(weights[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.losses = list(state["losses"])

    # -- the loop --------------------------------------------------------------------------

    def _micro_batches(self, indices: list[int]) -> Iterator[tuple[Tensor, Tensor]]:
        size = self.config.micro_batch or len(indices)
        device = self.model.device
        for start in range(0, len(indices), size):
            ids, labels = collate(
                [self.samples[i] for i in indices[start : start + size]], self.pad_id
            )
            yield ids.to(device), labels.to(device)

    def _train_step(self) -> float:
        indices = batch_indices(
            len(self.samples), self.config.batch_size, self.config.seed, self.step
        )
        micro = list(self._micro_batches(indices))
        n_tokens = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in micro)
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(self.config, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for ids, labels in micro:
            try:
                with _autocast(self.model):
                    loss = loss_sum(self.model, ids, labels, self.config.recompute, self.compiled)
                    loss = loss / n_tokens
                self.scaler.scale(loss).backward()
            except torch.OutOfMemoryError as exc:
                raise TrainingError(
                    f"out of memory on a micro-batch of {ids.shape[0]} samples × {ids.shape[1]} "
                    "tokens; lower the (micro-)batch size or the maximum sample length, or turn "
                    "on recomputation"
                ) from exc
            total += float(loss.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total

    def run(self) -> TrainResult:
        config = self.config
        if config.resume and (found := latest_checkpoint(config.out)) is not None:
            self.load(found)
        self.model.train()
        started, first_step = time.perf_counter(), self.step
        try:
            while self.step < config.steps:
                loss = self._train_step()
                if not math.isfinite(loss):
                    raise TrainingError(f"loss became {loss} at step {self.step + 1}; lower --lr")
                self.losses.append(loss)
                self.step += 1
                done = self.step - first_step
                speed = done * config.batch_size / (time.perf_counter() - started)
                if self.on_step is not None:
                    self.on_step(StepReport(self.step, config.steps, loss, speed))
                if config.save_every and self.step % config.save_every == 0:
                    self.save(config.out / f"checkpoint-{self.step}")
        finally:
            self.model.eval()
        elapsed = time.perf_counter() - started
        self.save(config.out)
        done = self.step - first_step
        speed = done * config.batch_size / elapsed if done else 0.0
        return TrainResult(config.out, self.step, list(self.losses), speed)


@torch.no_grad()
def evaluate_loss(
    model: ChatGLM2Model, samples: Sequence[Encoded], pad_id: int, batch: int
) -> float:
    """Mean response-token loss of samples (held-out evaluation)."""
    total, tokens = 0.0, 0
    for start in range(0, len(samples), batch):
        ids, labels = collate(samples[start : start + batch], pad_id)
        ids, labels = ids.to(model.device), labels.to(model.device)
        with _autocast(model):
            total += float(loss_sum(model, ids, labels, recompute=False))
        tokens += int((labels[:, 1:] != IGNORE).sum())
    return total / max(tokens, 1)
