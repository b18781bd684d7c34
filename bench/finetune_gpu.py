"""P-tuning v2 training speed and memory on one CUDA GPU: a plain eager loop against
kbqa.chatglm.train's Trainer, on a random full-size ChatGLM2 base (FP16, then INT4).

Every run: batch 16 × 256 tokens (a 128-token prompt, a 128-token response with the loss),
pre_seq_len 128, AdamW, fp16 autocast with loss scaling. The plain loop is what one writes
first: the whole model's logits, cross-entropy with ignored prompt positions, autograd
through the modules as they are (for INT4 it keeps every dequantized weight for backward).
The Trainer runs with the variants listed in TRAINER_RUNS (micro-batches, recomputation,
torch.compile of the float block's elementwise work); `--profile` adds a torch.profiler
table of two steps of the named Trainer run (kernels by GPU time).

    PYTHONPATH=. python3 bench/finetune_gpu.py --out $OUT/finetune_gpu.json
    PYTHONPATH=. python3 bench/finetune_gpu.py --bases fp16 --profile "micro 16 compiled"
    PYTHONPATH=. python3 bench/finetune_gpu.py --config tiny --device cpu --steps 2  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.model import PrefixEncoder
from kbqa.chatglm.prefix_tuning import IGNORE
from kbqa.chatglm.quantize import quantize_model
from kbqa.chatglm.train import Encoded, StepReport, TrainConfig, Trainer

BATCH, PROMPT, RESPONSE, PRE_SEQ_LEN = 16, 128, 128, 128
WARMUP = 2
# (label, micro-batch, recompute, compile) for the Trainer on each base; compile only
# changes float bases (a quantized base runs its modules).
TRAINER_RUNS = {
    "fp16": [
        ("micro 16 eager", 16, False, False),
        ("micro 16 compiled", 16, False, True),
        ("micro 16 + recompute compiled", 16, True, True),
    ],
    "int4": [
        ("micro 16", 16, False, False),
        ("micro 16 + recompute", 16, True, False),
        ("micro 4 + recompute", 4, True, False),
        ("micro 2 + recompute", 2, True, False),
    ],
}


def _samples(vocab: int, n: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, min(vocab, 60000), (n, PROMPT + RESPONSE), generator=g)
    return [Encoded(row.tolist(), PROMPT) for row in ids]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def plain_loop(model: ChatGLM2, samples: list[Encoded], steps: int) -> dict[str, Any]:
    """The first loop one writes: full logits, autograd through the modules as they are."""
    device = model.device
    config = dataclasses.replace(model.config, pre_seq_len=PRE_SEQ_LEN)
    model.requires_grad_(False)
    encoder = PrefixEncoder(config).to(device)  # fp32, trainable
    model.config.pre_seq_len = PRE_SEQ_LEN
    model.transformer.prefix_encoder = encoder
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    ids = torch.tensor([s.input_ids for s in samples[:BATCH]], device=device)  # [B, S]
    labels = ids.clone()
    labels[:, :PROMPT] = IGNORE
    model.train()
    _reset_peak(device)
    losses, times = [], []
    for _ in range(WARMUP + steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(ids)  # [B, S, vocab]
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        _sync(device)
        times.append(time.perf_counter() - start)
    model.eval()
    timed = times[WARMUP:]
    return {
        "samples_per_s": round(BATCH * len(timed) / sum(timed), 2),
        "peak_gb": _peak_gb(device),
        "losses": [round(x, 4) for x in losses],
    }


def trainer_loop(
    model: ChatGLM2,
    samples: list[Encoded],
    steps: int,
    micro: int,
    recompute: bool,
    compile: bool,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Time the Trainer's steps after WARMUP; profile_to: also write a profiler table of
    the two steps after the warm-up there (those steps then run slower)."""
    device = model.device
    stamps: list[float] = []
    losses: list[float] = []
    profiler = None
    if profile_to is not None:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        schedule = torch.profiler.schedule(wait=WARMUP, warmup=0, active=2, repeat=1)
        profiler = torch.profiler.profile(activities=activities, schedule=schedule)
        profiler.start()

    def on_step(report: StepReport) -> None:
        _sync(device)
        stamps.append(time.perf_counter())
        losses.append(report.loss)
        if profiler is not None:
            profiler.step()

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            out=Path(out),
            steps=WARMUP + steps,
            batch_size=BATCH,
            micro_batch=micro,
            pre_seq_len=PRE_SEQ_LEN,
            recompute=recompute,
            compile=compile,
        )
        trainer = Trainer(model, samples, config, pad_id=0, on_step=on_step)
        _reset_peak(device)
        started = time.perf_counter()
        trainer.run()
    if profiler is not None and profile_to is not None:
        profiler.stop()
        table = profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=45)
        profile_to.write_text(table)
        print(table, flush=True)
    timed = stamps[WARMUP - 1 :]  # from the end of the last warm-up step
    return {
        "samples_per_s": round(BATCH * (len(timed) - 1) / (timed[-1] - timed[0]), 2),
        "peak_gb": _peak_gb(device),
        "first_step_s": round(stamps[0] - started, 2),  # compilation included
        "losses": [round(x, 4) for x in losses],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="finetune_gpu.json")
    parser.add_argument("--config", default="chatglm2-6b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--bases", default="fp16,int4", help="comma-separated: fp16, int4")
    parser.add_argument("--profile", default="", help="a TRAINER_RUNS label to profile (fp16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "batch": f"{BATCH} x {PROMPT + RESPONSE}",
        "pre_seq_len": PRE_SEQ_LEN,
        "runs": {},
        "errors": [],
    }

    def record(name: str, fn: Any) -> None:
        started = time.perf_counter()
        try:
            results["runs"][name] = fn()
        except Exception:
            results["errors"].append(f"{name}: {traceback.format_exc()[-1200:]}")
            print(results["errors"][-1], flush=True)
        torch.cuda.empty_cache() if device.type == "cuda" else None
        print(f"[{name}] {time.perf_counter() - started:.1f}s {results['runs'].get(name)}",
              flush=True)  # fmt: skip
        Path(args.out).write_text(json.dumps(results, indent=1))

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = ChatGLM2.from_config(args.config, device=device, dtype=dtype)
    samples = _samples(model.config.padded_vocab_size, 64)
    profile_table = Path(args.out).with_suffix(".profile.txt")
    for base in args.bases.split(","):
        if base == "int4":
            model.transformer.prefix_encoder = None
            quantize_model(model, 4)
            model.config.quantization_bit = 4
        record(f"{base} plain eager", lambda: plain_loop(model, samples, args.steps))
        for label, micro, recompute, compile in TRAINER_RUNS[base]:
            record(
                f"{base} trainer {label}",
                lambda m=micro, r=recompute, c=compile: trainer_loop(
                    model, samples, args.steps, m, r, c
                ),
            )
        for label, micro, recompute, compile in TRAINER_RUNS[base]:
            if label == args.profile and base == "fp16":
                record(
                    f"{base} profiled {label}",
                    lambda m=micro, r=recompute, c=compile: trainer_loop(
                        model, samples, 2, m, r, c, profile_to=profile_table
                    ),
                )

    print(f"\n{results['card']}  torch {results['torch']}  {results['date']}")
    print(f"{'run':40s} {'samples/s':>10s} {'peak GB':>8s}")
    for name, run in results["runs"].items():
        peak = f"{run['peak_gb']:.2f}" if run["peak_gb"] is not None else "-"
        print(f"{name:40s} {run['samples_per_s']:10.2f} {peak:>8s}")
    for error in results["errors"]:
        print("ERROR", error.splitlines()[0] if error else "")


if __name__ == "__main__":
    main()
