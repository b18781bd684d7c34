"""The batching engine over N tensor-parallel GPUs (issue #18, `kbqa serve --tensor-parallel N`)
against the same engine on one GPU. Not yet run on a machine with several GPUs
(bench/RESULTS.md, "#18").

Full-size random chatglm2-6b (FP16, or INT4 with --quantize int4). This process is rank 0 on
cuda:0, as the server is, and starts ranks 1..N-1 on cuda:1.. (parallel_engine.py). For each
of N ranks and one GPU: decode tokens/s of 1 stream, and the aggregate decode tokens/s of
--streams streams generating together (tokens out while all of them decode, over that time),
each the second of two runs (the first captures the CUDA graphs of its shapes); and whether
the greedy tokens of a few prompts agree with one GPU's (FP16 sums in another order may part
them after some tokens: recorded, not a goal). Goals: --streams (64) streams ≥ 1.6× one GPU's
aggregate tokens/s; 1 stream ≥ 1.3×.

    PYTHONPATH=. python3 bench/chatglm_tp_gpu.py --tp 2 --out $OUT/tp.json
    PYTHONPATH=. python3 bench/chatglm_tp_gpu.py --smoke   # tiny preset, 2 gloo ranks on the CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import traceback
from typing import Any

import torch

from kbqa.chatglm import parallel_engine
from kbqa.chatglm.batching import BatchEngine, Request
from kbqa.chatglm.tensor_parallel import ParallelModel


def _prompt(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def _aggregate(requests: list[Request]) -> float:
    """Tokens/s over the time every request was decoding (after the last first token, before
    the first last token)."""
    start = max(r.token_times[0] for r in requests)
    end = min(r.token_times[-1] for r in requests)
    tokens = sum(sum(1 for t in r.token_times if start < t <= end) for r in requests)
    return round(tokens / (end - start), 1)


def measure(engine: BatchEngine, args: argparse.Namespace) -> dict[str, Any]:
    vocab = engine.model.config.padded_vocab_size
    found: dict[str, Any] = {}
    for streams in (1, args.streams):
        runs = []
        for _ in range(2):
            prompts = [_prompt(args.prompt, i, vocab) for i in range(streams)]
            requests = [engine.submit(p, max_new_tokens=args.new, stop_ids=[]) for p in prompts]
            for request in requests:
                request.result(timeout=600)
            runs.append(_aggregate(requests))
        found[f"streams_{streams}_tok_s"] = runs[-1]
        found[f"streams_{streams}_first_run_tok_s"] = runs[0]
        print(f"  {streams} streams: {runs[-1]} tok/s", flush=True)
    checks = [engine.submit(_prompt(37, 1000 + i, vocab), max_new_tokens=16) for i in range(4)]
    found["greedy_tokens"] = [r.result(timeout=600) for r in checks]
    return found


def run(world: int, spec: ParallelModel, device: torch.device, args: argparse.Namespace) -> Any:
    model = spec.build(device)
    options = {
        "max_batch": args.streams,
        "max_seq": args.prompt + args.new + 1,
        "warm_up": device.type == "cuda",
    }
    if world == 1:
        engine = BatchEngine(model, **options)
    else:
        engine = parallel_engine.start(model, spec, world, **options)
    try:
        engine.start()
        print(f"{world} rank(s):", flush=True)
        found = measure(engine, args)
        if device.type == "cuda":
            found["peak_bytes_rank0"] = torch.cuda.max_memory_allocated(device)
        return found
    finally:
        engine.close()
        del engine, model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--preset", default="chatglm2-6b")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--quantize", choices=["int4"], default=None, help="else fp16")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, gloo on the CPU")
    parser.add_argument("--out", default="tp.json")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.streams, args.prompt, args.new = "tiny", 4, 32, 8
    on_gpu = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    dtype = torch.float16 if on_gpu else torch.float32
    spec = ParallelModel(config=args.preset, seed=0, dtype=dtype, quantize=args.quantize)
    results: dict[str, Any] = {"args": vars(args)}
    if on_gpu:
        results["gpus"] = [torch.cuda.get_device_name(i) for i in range(args.tp)]
    # Each part on its own: one that fails (NCCL, memory) is recorded and the next still runs,
    # so that a single call on a lent machine brings back what it can.
    for name, world in ((f"tp{args.tp}", args.tp), ("one_gpu", 1)):
        try:
            results[name] = run(world, spec, device, args)
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
            print(results[name]["error"], flush=True)
        _write(results, args.out)
    tp, one = results[f"tp{args.tp}"], results["one_gpu"]
    if "error" not in tp and "error" not in one:
        for streams, goal in ((args.streams, 1.6), (1, 1.3)):
            key = f"streams_{streams}_tok_s"
            results[f"goal_{streams}_streams_ratio"] = [round(tp[key] / one[key], 3), goal]
        results["greedy_tokens_agree"] = tp["greedy_tokens"] == one["greedy_tokens"]
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("goal", "greedy"))}))
    _write(results, args.out)


def _write(results: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
