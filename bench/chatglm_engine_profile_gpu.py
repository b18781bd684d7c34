"""Where a single-stream decode step's time goes on a CUDA GPU: `generate` (the public API, so
an older tree runs too: PYTHONPATH=<tree>) under torch.profiler, the kernels of every decode
step (CUDA graph replays included) summed by name, per generated token, beside the wall time
per token. The gap between the two is time the GPU waited for the host.

    PYTHONPATH=. python3 bench/chatglm_engine_profile_gpu.py --quantize int4 --out $OUT/p.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from kbqa.chatglm import ChatGLM2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quantize", choices=["int4", "int8"])
    parser.add_argument("--ctx", type=int, default=2000)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--out", default="chatglm_engine_profile.json")
    parser.add_argument("--config", default="chatglm2-6b", help="tiny: a CPU smoke run")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    model = ChatGLM2.from_config(
        args.config, device=args.device, dtype=dtype, quantize=args.quantize
    )
    vocab = model.config.padded_vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(100, vocab - 100, (args.ctx,), generator=g).tolist()

    def run(new: int) -> list[float]:
        times = []
        for _ in model.generate(ids, max_new_tokens=new, temperature=0.0, eos_token_ids=[]):
            times.append(time.perf_counter())
        return times

    def kernel_times(new: int) -> dict[str, list[float]]:
        """µs of each kernel by name over one generate() of `new` tokens."""
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(new)
        found: dict[str, list[float]] = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                found.setdefault(event.name, []).append(event.time_range.elapsed_us())
        return found

    run(args.new)
    run(args.new)  # warm: graphs captured, kernels compiled
    wall = run(args.new)
    per_token_us = (wall[-1] - wall[0]) / (len(wall) - 1) * 1e6
    # The decode steps' kernels: a run of `new` tokens less a run of one (the prefill alone).
    full, prefill = kernel_times(args.new), kernel_times(1)
    tokens = args.new - 1
    rows = []
    for name, times in full.items():
        calls = len(times) - len(prefill.get(name, []))
        us = sum(times) - sum(prefill.get(name, []))
        if calls <= 0:
            continue
        median = sorted(times)[len(times) // 2]
        rows.append({
            "name": name[:120], "calls_per_token": round(calls / tokens, 2),
            "us_per_token": round(us / tokens, 2), "us_median": round(median, 2),
        })  # fmt: skip
    rows.sort(key=lambda r: -r["us_per_token"])
    found: dict[str, Any] = {
        "card": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "package": ChatGLM2.__module__,
        "quantize": args.quantize or "fp16",
        "wall_us_per_token": round(per_token_us, 1),
        "gpu_us_per_token_decode_kernels": round(sum(r["us_per_token"] for r in rows), 1),
        "kernels": rows[:40],
    }
    with open(args.out, "w") as f:
        json.dump(found, f, indent=1)
    wall_us, gpu_us = found["wall_us_per_token"], found["gpu_us_per_token_decode_kernels"]
    print(f"wall {wall_us} us/token; decode kernels {gpu_us} us/token")
    for r in rows[:14]:
        us, calls, median = r["us_per_token"], r["calls_per_token"], r["us_median"]
        print(f"{us:8.1f} us/tok {calls:6.2f}/tok {median:7.2f} us  {r['name'][:70]}")


if __name__ == "__main__":
    main()
