"""ChatGLM2 over several GPUs (issue #18): the layer split against one GPU, and the eager
model tensor-parallel over N ranks against one process. Not yet run on a machine with
several GPUs (bench/RESULTS.md, "#18: not run").

Layer split, full-size random chatglm2-6b (FP16, or INT4 with --quantize int4): peak memory
on each GPU while generating after a 2,000-token prompt, and single-stream decode tokens/s,
for the model on cuda:0 (the fast engine, and the eager model) and split over --devices.
Goals: peak per GPU ≤ 55 % of the one-GPU peak; split decode ≥ 90 % of one GPU's.

Tensor parallel: decode ms per token of the eager model over --tp ranks (NCCL) against one
rank. (The issue's throughput goals are for the batching engine, which is not sharded yet.)

    PYTHONPATH=. python3 bench/chatglm_split_gpu.py --out $OUT/split.json
    PYTHONPATH=. python3 bench/chatglm_split_gpu.py --smoke   # the tiny preset on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.tensor_parallel import ParallelModel, launch, shard


def _reset(devices: Sequence[torch.device]) -> None:
    gc.collect()
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _peaks(devices: Sequence[torch.device]) -> dict[str, int]:
    return {str(d): torch.cuda.max_memory_allocated(d) for d in set(devices) if d.type == "cuda"}


def generation(
    model: ChatGLM2, devices: Sequence[torch.device], prompt: int, new: int, fast: bool | None
) -> dict[str, Any]:
    """Decode tokens/s after a `prompt`-token prompt and each GPU's peak memory (weights,
    cache and activations) over the whole generation."""
    ids = torch.randint(100, model.config.padded_vocab_size - 100, (prompt,)).tolist()
    times = []
    options = {"max_new_tokens": new, "temperature": 0.0, "eos_token_ids": []}
    for _ in model.generate(ids, fast=fast, **options):
        times.append(time.perf_counter())
    return {
        "decode_tok_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
        "peak_bytes": _peaks(devices),
        "bytes_by_device": model.memory_by_device(),
    }


def split_section(args: argparse.Namespace, quantize: str | None) -> dict[str, Any]:
    one = torch.device(args.devices[0])
    devices = [torch.device(d) for d in args.devices]
    dtype = torch.float32 if one.type == "cpu" else torch.float16
    found: dict[str, Any] = {}
    # The split first: generate() keeps a one-device model's engine (and so the model) alive
    # for the process, which would count in the split's peak on the first GPU.
    _reset(devices)
    split = ChatGLM2.from_config(args.preset, None, dtype, quantize, devices=args.devices)
    found["split"] = generation(split, devices, args.prompt, args.new, None)
    found["ranges"] = (
        [[r.start, r.stop] for r in split.device_map.ranges] if split.device_map else []
    )
    del split
    _reset(devices)
    model = ChatGLM2.from_config(args.preset, one, dtype, quantize)
    found["one_device_eager"] = generation(model, [one], args.prompt, args.new, False)
    _reset(devices)
    found["one_device_engine"] = generation(model, [one], args.prompt, args.new, None)
    return found


def tp_decode(rank: int, world: int, spec: ParallelModel, prompt: int, new: int) -> float:
    """ms per decode step of the eager model sharded over `world` ranks."""
    device = torch.device(f"cuda:{rank}" if dist.get_backend() == "nccl" else "cpu")
    model = spec.build(device)
    if world > 1:
        shard(model, rank, world)
    model.setup_caches(1, prompt + new + 1)
    ids = torch.arange(100, 100 + prompt, device=device).view(1, -1)  # [1, S]
    with torch.no_grad():
        model(ids, torch.arange(prompt, device=device), last_logits_only=True)
        token = torch.tensor([[7]], device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for step in range(new):
            model(token, torch.tensor([prompt + step], device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return round((time.perf_counter() - t0) * 1000 / new, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cuda:0", "cuda:1"])
    parser.add_argument("--preset", default="chatglm2-6b")
    parser.add_argument("--prompt", type=int, default=2000)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--quantize", choices=["int4"], default=None, help="else fp16")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, CPU, gloo")
    parser.add_argument("--out", default="split.json")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.preset, args.prompt, args.new = ["cpu", "cpu"], "tiny", 64, 8
    results: dict[str, Any] = {"args": vars(args)}
    # One weight type a run (--quantize int4 for the second), for the reason in split_section.
    results["split"] = split_section(args, args.quantize)
    print(json.dumps(results["split"]), flush=True)
    on_cpu = args.smoke or not torch.cuda.is_available()
    dtype = torch.float32 if on_cpu else torch.float16
    spec = ParallelModel(config=args.preset, dtype=dtype, quantize=args.quantize)
    backend = "gloo" if on_cpu else "nccl"
    for world in (1, args.tp):
        ms = launch(tp_decode, world, spec, args.prompt, args.new, backend=backend)
        results[f"tp{world}_decode_ms"] = ms
        print(f"tensor parallel {world}: {ms} ms/token", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
