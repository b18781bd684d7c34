"""ChatGLM2-6B on one CUDA GPU through the public API only (`generate`, `BatchEngine`), so the
same script times this tree and an older one (PYTHONPATH=<old tree> python3 this-script).

Full-size random weights, FP16 and INT4. Measures: single-stream generate (prefill of a
2,000-token prompt, decode tok/s at 2k context), the batching engine at 1 and 16 streams
(`--streams 1 16 64` for more; decode tok/s, prefill of 2,000 tokens), prefill of an
8,192-token prompt against a 2,048-token one (per token) with the peak memory of the 8k run,
the time from starting a warming-up engine to its first token, and (where the tree has them)
the logits of the fast forward against the eager model. Prints a table last; writes JSON.

    PYTHONPATH=. python3 bench/chatglm_engine_gpu.py --label new --out $OUT/new.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batching import BatchEngine, Request

R: dict[str, Any] = {}


def section(name: str, fn: Callable[[], Any], out: str) -> None:
    """One measurement; a failure is recorded and the next one still runs."""
    t0 = time.perf_counter()
    try:
        R[name] = fn()
    except Exception:
        R[name] = {"error": traceback.format_exc()[-1200:]}
    print(f"[{name}] {time.perf_counter() - t0:.1f}s {R[name]}", flush=True)
    with open(out, "w") as f:
        json.dump(R, f, indent=1, default=str)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def prompt(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n,), generator=g).tolist()


def one_stream(model: ChatGLM2, ids: list[int], new: int, device: str) -> dict[str, float]:
    """generate() end to end: time to the first token (prefill + first sample) and decode
    tokens per second after it."""
    sync(device)
    t0 = time.perf_counter()
    times = []
    for _ in model.generate(ids, max_new_tokens=new, temperature=0.0, eos_token_ids=[]):
        times.append(time.perf_counter())
    first_ms = (times[0] - t0) * 1000
    return {
        "first_token_ms": round(first_ms, 2),
        "tok_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
    }


def engine_rate(requests: list[Request]) -> dict[str, float]:
    """Decode tokens per second while every request was decoding, over all requests."""
    start = max(r.token_times[0] for r in requests)
    end = min(r.token_times[-1] for r in requests)
    tokens = sum(sum(1 for t in r.token_times if start < t <= end) for r in requests)
    ttft = [(r.token_times[0] - r.submitted_at) * 1000 for r in requests]
    return {
        "tok_s": round(tokens / (end - start), 1) if end > start else 0.0,
        "window_s": round(end - start, 3),
        "first_token_ms_min": round(min(ttft), 1),
    }


def run_engine(engine: BatchEngine, prompts: list[list[int]], new: int) -> list[Request]:
    requests = [engine.submit(p, max_new_tokens=new, stop_ids=[]) for p in prompts]
    for r in requests:
        r.result(timeout=600)
    return requests


def logits_error(model: ChatGLM2, vocab: int) -> dict[str, float]:
    """The fast forward (this tree's EngineSteps, or an older tree's FastSteps) against the
    eager model: prefill of 1,000 tokens, then 8 decode steps."""
    ids = torch.tensor(prompt(1008, 7, vocab), device=model.device)
    try:
        from kbqa.chatglm.generate import EagerSteps, EngineSteps

        fast: Any = EngineSteps(model, 1024)
        model.setup_caches(1, 1024)
        eager: Any = EagerSteps(model)
    except ImportError:
        from kbqa.chatglm.fast import EagerSteps as OldEager  # type: ignore[import-not-found]
        from kbqa.chatglm.fast import FastSteps  # type: ignore[import-not-found]

        model.setup_caches(1, 1024)
        fast, eager = FastSteps(model), OldEager(model)
    with torch.no_grad():
        want = [eager.prefill(ids[:1000])] + [eager.decode(ids[p], p) for p in range(1000, 1008)]
        got = [fast.prefill(ids[:1000]).clone()]
        got += [fast.decode(ids[p], p).clone() for p in range(1000, 1008)]
    errors = [
        float((g.double() - w.double()).norm() / w.double().norm())
        for g, w in zip(got, want, strict=True)
    ]
    agree = sum(int(g.argmax()) == int(w.argmax()) for g, w in zip(got, want, strict=True))
    model.setup_caches(1, 2)  # give the eager cache back
    return {
        "prefill_rel": round(errors[0], 6),
        "decode_rel_max": round(max(errors[1:]), 6),
        "argmax_agree": f"{agree}/9",
    }


def long_run(
    model: ChatGLM2,
    p8k: list[int],
    short: float,
    tensors: dict[int, torch.Tensor],
    variant: str | None,
    args: argparse.Namespace,
    device: str,
) -> dict[str, Any]:
    """The long prompt's first token and peak memory, with the tree's chunking, or (variant
    "CHUNK:COLUMNS[:eager]", this tree only) chunks of CHUNK tokens with the MLP over COLUMNS
    intermediate features at a time, as CUDA graphs (ChunkGraphs) or eagerly."""
    one_stream(model, p8k, 2, device)  # warm: the chunks (and the steps' cache)
    if variant is not None:
        from kbqa.chatglm.generate import steps_for
        from kbqa.chatglm.prefill_graphs import ChunkGraphs

        steps: Any = steps_for(model, len(p8k) + 2)
        chunk, columns, *how = variant.split(":")
        steps.chunk, steps.mlp_columns = int(chunk), int(columns)
        steps.chunks = None
        if how != ["eager"] and device == "cuda":
            steps.chunks = ChunkGraphs(steps.forward, int(chunk), 0, int(columns))
        one_stream(model, p8k, 2, device)  # warm: this chunk's shapes
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    long = one_stream(model, p8k, 2, device)["first_token_ms"]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    ratio = (long / args.long) / (short / 2048)
    found: dict[str, Any] = {
        f"prefill_{args.long}_ms": long,
        "per_token_ratio": round(ratio, 3),
        "peak_gb": round(peak / 1e9, 4),
    }
    if device == "cuda":
        # What the peak is made of: what stays allocated after the run besides the model's
        # tensors (the KV cache, graphs' buffers, cuBLAS workspaces), by block size; the
        # rest of the peak was the prefill's activations.
        after = torch.cuda.memory_allocated()
        found["allocated_after_gb"] = round(after / 1e9, 4)
        # A graph's activations live in its memory pool, reserved and not counted as
        # allocated while it replays: the reserved peak (after empty_cache) counts them.
        found["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 4)
        found["transient_mb"] = round((peak - after) / 1e6, 1)
        sizes: dict[str, int] = {}
        for segment in torch.cuda.memory_snapshot():
            for block in segment["blocks"]:
                if block["state"] != "active_allocated" or block["address"] in tensors:
                    continue
                mb = f"{block['size'] / 1e6:.1f}MB"
                sizes[mb] = sizes.get(mb, 0) + 1
        found["other_blocks"] = dict(sorted(sizes.items(), key=lambda kv: -float(kv[0][:-2])))
    return found


def use_sweep(path: str) -> dict[str, Any]:
    """Put the winners of a sweep (bench/chatglm_engine_gemv_gpu.py, same machine) into this
    tree's tables of launch configurations where they beat today's by 2 % or more, so that
    the numbers below are what the engine gives with them."""
    from kbqa.chatglm import attn_kernels, kernels

    with open(path) as f:
        swept = json.load(f)
    used = {}
    for name, found in swept.items():
        if not isinstance(found, dict) or not found.get("best") or "table" not in found:
            continue
        unit = "us" if "us" in found["best"] else "ms"  # GEMVs in µs, attention in ms
        now = found.get("now")
        if now is not None and found["best"][unit] > 0.98 * now[unit]:
            continue
        table, key = found["table"]
        module = kernels if hasattr(kernels, table) else attn_kernels
        getattr(module, table)[tuple(key)] = tuple(found["best"]["cfg"])
        used[name] = found["best"]["cfg"]
    return used


def measure(label: str, quantize: str | None, args: argparse.Namespace, out: str) -> None:
    device, name = args.device, quantize or "fp16"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = ChatGLM2.from_config(args.config, device=device, dtype=dtype, quantize=quantize)
    vocab, ctx = model.config.padded_vocab_size, args.ctx
    p2k = prompt(ctx, 1, vocab)
    if not args.skip_check:
        section(f"{name}.logits_vs_eager", lambda: logits_error(model, vocab), out)

    def single() -> dict[str, Any]:
        runs = [one_stream(model, p2k, args.new + 1, device) for _ in range(3)]
        return {"runs": runs, "best_tok_s": max(r["tok_s"] for r in runs[1:]),
                "prefill_ms": min(r["first_token_ms"] for r in runs[1:])}  # fmt: skip

    if not args.skip_streams:
        section(f"{name}.generate_1_stream", single, out)

    def engine() -> dict[str, Any]:
        found: dict[str, Any] = {}
        streams = sorted(set(args.streams))
        eng = BatchEngine(model, max_batch=streams[-1], max_seq=ctx + args.new * 3).start()
        try:
            for n in streams:
                prompts = [prompt(ctx, 10 + i, vocab) for i in range(n)]
                new = args.new if n == 1 else args.new * 3  # long enough for all n to overlap
                run_engine(eng, prompts, new)  # captures the graphs these shapes need
                found[f"{n}_streams"] = engine_rate(run_engine(eng, prompts, new))
            found["stats"] = dict(vars(getattr(eng, "stats", object())))  # steps_ahead etc.
        finally:
            eng.close()
        return found

    if not args.skip_streams:
        section(f"{name}.engine", engine, out)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    def long_prompt() -> dict[str, Any]:
        p8k = prompt(args.long, 2, vocab)
        p2 = prompt(2048, 3, vocab)
        one_stream(model, p2, 2, device)  # warm: 2,048 tokens in one piece
        short = min(one_stream(model, p2, 2, device)["first_token_ms"] for _ in range(2))
        found: dict[str, Any] = {"prefill_2048_ms": short}
        tensors = {t.data_ptr(): t for t in model.state_dict(keep_vars=True).values()}
        weights = sum(t.numel() * t.element_size() for t in tensors.values())
        found["model_tensors_gb"] = round(weights / 1e9, 3)
        for variant in [None, *(args.chunks or [])]:
            key = "default" if variant is None else variant
            try:
                found[key] = long_run(model, p8k, short, tensors, variant, args, device)
            except Exception:
                found[key] = {"error": traceback.format_exc()[-800:]}
            gc.collect()
        return found

    if not args.skip_long:
        section(f"{name}.long_prompt", long_prompt, out)

    def warm_up() -> dict[str, float]:
        t0 = time.perf_counter()
        eng = BatchEngine(model, max_batch=16, max_seq=ctx + args.new, warm_up=True).start()
        try:
            request = eng.submit(prompt(500, 4, vocab), max_new_tokens=4, stop_ids=[])
            request.result(timeout=600)
            return {"start_to_first_token_s": round(request.token_times[0] - t0, 2)}
        finally:
            eng.close()

    if not args.skip_warm_up:
        section(f"{name}.serve_warm_up", warm_up, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="new")
    parser.add_argument("--out", default="chatglm_engine.json")
    parser.add_argument("--config", default="chatglm2-6b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ctx", type=int, default=2000)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--long", type=int, default=8192)
    parser.add_argument("--only", choices=["fp16", "int4"])
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--skip-warm-up", action="store_true")
    parser.add_argument("--skip-long", action="store_true", help="no 8k-token prompt")
    parser.add_argument("--skip-streams", action="store_true", help="no decode rates")
    parser.add_argument(
        "--streams", type=int, nargs="+", default=[1, 16], help="engine stream counts (1 16 64)"
    )
    parser.add_argument(
        "--tuned", nargs="*", help="sweeps' JSON (GEMV, attention) whose winners to launch with"
    )
    parser.add_argument(
        "--chunks", nargs="*", help="long-prompt variants CHUNK:COLUMNS (this tree only)"
    )
    args = parser.parse_args()
    R["label"] = args.label
    for path in args.tuned or []:
        R.setdefault("tuned_from_sweep", {}).update(use_sweep(path))
    package = Path(sys.modules["kbqa.chatglm"].__file__ or "")
    R["package"] = os.path.relpath(package, Path.cwd())  # which tree was timed
    R["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if args.device == "cuda":
        R["card"] = torch.cuda.get_device_name()
    for quantize in (None, "int4"):
        if args.only in (None, quantize or "fp16"):
            measure(args.label, quantize, args, args.out)
            gc.collect()  # the model goes with measure()'s frame
            if args.device == "cuda":
                torch.cuda.empty_cache()
    try:  # a kernel that failed turned the kernels off: the numbers are the torch ops'
        from kbqa.chatglm import triton_use

        R["kernels_turned_off"] = list(getattr(triton_use, "_turned_off", []))
    except ImportError:  # a tree before triton_use.py
        pass
    with open(args.out, "w") as f:
        json.dump(R, f, indent=1, default=str)
    print(json.dumps(R, indent=1, default=str))


if __name__ == "__main__":
    main()
