"""ChatGLM2 split by layers over several GPUs (issue #18, `llm.chatglm2.devices`) against one
GPU, through the batching engine the server runs. Not yet run on a machine with several GPUs
(bench/RESULTS.md, "#18").

Full-size random chatglm2-6b, FP16 (or INT4 with --quantize int4; one weight type a run). For
the model on --devices[0] alone and split over --devices: each GPU's peak memory (weights, the
engine's KV cache of --max-batch rows, activations) while one stream generates --new tokens
after a --prompt-token prompt, and that stream's decode tokens/s (the second of two runs: the
first captures the CUDA graphs of its shapes). Goals: the split's peak per GPU ≤ 55 % of the
one-GPU peak; its single-stream decode ≥ 90 % of one GPU's. Also single-stream `generate()`
(which runs a split model eagerly) for reference.

    PYTHONPATH=. python3 bench/chatglm_split_gpu.py --out $OUT/split_fp16.json
    PYTHONPATH=. python3 bench/chatglm_split_gpu.py --quantize int4 --out $OUT/split_int4.json
    PYTHONPATH=. python3 bench/chatglm_split_gpu.py --smoke   # tiny preset, ["cpu", "cpu"]
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batching import BatchEngine


def _reset(devices: Sequence[torch.device]) -> None:
    gc.collect()
    for device in set(devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _peaks(devices: Sequence[torch.device]) -> dict[str, int]:
    return {str(d): torch.cuda.max_memory_allocated(d) for d in set(devices) if d.type == "cuda"}


def _prompt(n: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(n)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def engine_stream(
    model: ChatGLM2, devices: Sequence[torch.device], args: argparse.Namespace
) -> dict[str, Any]:
    """One stream through a BatchEngine of --max-batch rows: decode tok/s of the second run,
    and each GPU's peak over both (from the loaded model on)."""
    _reset(devices)
    ids = _prompt(args.prompt, model.config.padded_vocab_size)
    max_seq = args.prompt + args.new + 1
    engine = BatchEngine(model, max_batch=args.max_batch, max_seq=max_seq, warm_up=True)
    with engine:
        runs = []
        for _ in range(2):
            request = engine.submit(ids, max_new_tokens=args.new, stop_ids=[])
            request.result(timeout=600)
            times = request.token_times
            runs.append(round((len(times) - 1) / (times[-1] - times[0]), 1))
        graphs = engine.decoder.graphs
    return {
        "decode_tok_s": runs[-1],
        "first_run_tok_s": runs[0],
        "decode_graphs": graphs,
        "peak_bytes": _peaks(devices),
        "cache_bytes": engine.cache.nbytes,
    }


def generate_stream(
    model: ChatGLM2, devices: Sequence[torch.device], args: argparse.Namespace
) -> dict[str, Any]:
    """Single-stream generate() (eager for a model over several GPUs): decode tok/s."""
    _reset(devices)
    ids = _prompt(args.prompt, model.config.padded_vocab_size)
    options = {"max_new_tokens": args.new, "temperature": 0.0, "eos_token_ids": []}
    times = [time.perf_counter() for _ in model.generate(ids, **options)]
    return {"decode_tok_s": round((len(times) - 1) / (times[-1] - times[0]), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cuda:0", "cuda:1"])
    parser.add_argument("--preset", default="chatglm2-6b")
    parser.add_argument("--prompt", type=int, default=2000)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--quantize", choices=["int4"], default=None, help="else fp16")
    parser.add_argument("--smoke", action="store_true", help="tiny preset on the CPU")
    parser.add_argument("--out", default="split.json")
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.preset, args.prompt, args.new = ["cpu", "cpu"], "tiny", 64, 8
    devices = [torch.device(d) for d in args.devices]
    one = devices[0]
    dtype = torch.float32 if one.type == "cpu" else torch.float16
    results: dict[str, Any] = {"args": vars(args)}
    if one.type == "cuda":
        results["gpus"] = [
            torch.cuda.get_device_name(d) for d in sorted({d.index for d in devices})
        ]

    def section(name: str, run: Callable[[], Any]) -> None:
        """One measurement; a failure is recorded and the next one still runs."""
        try:
            results[name] = run()
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
        print(name, results[name], flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)

    def split_runs() -> None:
        """The split model's runs; it is freed when they return."""
        torch.manual_seed(0)
        split = ChatGLM2.from_config(args.preset, None, dtype, args.quantize, devices=args.devices)
        assert split.device_map is not None
        results["ranges"] = [[r.start, r.stop] for r in split.device_map.ranges]
        results["split_weights_by_device"] = split.memory_by_device()
        section("split_engine", lambda: engine_stream(split, devices, args))
        section("split_generate", lambda: generate_stream(split, devices, args))

    # The split first: generate() keeps a one-device model's engine (and so the model) alive
    # for the process, which would count in the split's peak on the first GPU.
    split_runs()
    _reset(devices)

    torch.manual_seed(0)
    model = ChatGLM2.from_config(args.preset, one, dtype, args.quantize)
    section("one_engine", lambda: engine_stream(model, [one], args))
    section("one_generate", lambda: generate_stream(model, [one], args))

    def goals() -> dict[str, float]:
        split_run, one_run = results["split_engine"], results["one_engine"]
        found = {"goal_decode_ratio": split_run["decode_tok_s"] / one_run["decode_tok_s"]}
        one_peak = max(one_run["peak_bytes"].values(), default=0)
        if one_peak:  # ≤ 0.55
            found["goal_peak_ratio"] = max(split_run["peak_bytes"].values()) / one_peak
        return {k: round(v, 3) for k, v in found.items()}

    section("goals", goals)


if __name__ == "__main__":
    main()
