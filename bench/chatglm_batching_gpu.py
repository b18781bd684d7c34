"""Continuous batching of ChatGLM2-6B on one CUDA GPU, against one request at a time.

Full-size random weights. For N = 1, 4, 16, 64 concurrent streams, each with a 2,000-token
prompt (2k context), all submitted at once to a BatchEngine: time to first token per stream,
inter-token latency p50/p95 over every stream's whole life (so it includes the steps slowed by
newcomers' prefill), aggregate decode tokens/s once all N decode together (steady state), and
peak memory. The baseline is model.generate, one request at a time (its fast path where the
tree has one, and the eager model). Checks first: the fused decode step against the model's
modules, and graph replay against eager. FP16, then INT4 at N = 1 and 16.

    PYTHONPATH=. python3 bench/chatglm_batching_gpu.py --out $OUT/batching.json
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import gc
import inspect
import itertools
import json
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batched import (
    DecodeStep,
    SlotCache,
    decode,
    key_bucket,
    prefill,
)
from kbqa.chatglm.batched_prefill import Prefiller, Segment
from kbqa.chatglm.batching import BatchEngine, EngineStats, Request, wait_all

PROMPT, MAX_SEQ, STEADY = 2000, 2560, 64  # STEADY: tokens per stream in the measured window
VOCAB = 64000
DEVICE = "cuda"  # --device cpu with --config tiny: a dry run of this script on a CPU
R: dict[str, Any] = {}
ERRORS: list[str] = []


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def section(name: str, fn: Callable[[], None], out: str) -> None:
    """One part of the benchmark; a failure is recorded and the next part still runs."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:
        ERRORS.append(f"{name}: {traceback.format_exc()[-2000:]}")
        print(ERRORS[-1], flush=True)
    R.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
    R["errors"] = ERRORS
    with open(out, "w") as f:
        json.dump(R, f, indent=1, default=str)
    print(f"[{name}] {time.perf_counter() - t0:.1f}s", flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, VOCAB, (PROMPT,), generator=g).tolist() for _ in range(n)]


def checks(model: ChatGLM2, tag: str) -> bool:
    """Fused decode vs the modules, graph vs eager; returns whether the fused path is usable."""
    cache = SlotCache(model, 8, MAX_SEQ)
    lengths = [PROMPT, PROMPT * 3 // 4, PROMPT // 3]
    n_keys = key_bucket(PROMPT + 1, cache.slots)
    with torch.no_grad():
        for row, n in enumerate(lengths):
            ids = torch.randint(100, VOCAB, (n,), device=DEVICE)
            prefill(model, cache, ids, 0, row, logits=False)
        tok = torch.tensor([5, 6, 7, 0], device=DEVICE)
        pos = torch.tensor([*lengths, 0], device=DEVICE)
        rows = torch.tensor([0, 1, 2, cache.scratch], device=DEVICE)
        plain = decode(model, cache, tok, pos, rows, n_keys)[:3]
        step = DecodeStep(model, cache)
        fused_ok = step.kernels is not None
        out: dict[str, Any] = {"fused_available": fused_ok}
        if fused_ok:
            try:
                fused = decode(model, cache, tok, pos, rows, n_keys, step.kernels)[:3]
                out["fused_vs_modules_rel_err"] = rel(fused, plain)
                out["fused_argmax_agrees"] = bool((fused.argmax(-1) == plain.argmax(-1)).all())
                fused_ok = out["fused_vs_modules_rel_err"] < 2e-2
            except Exception:
                out["fused_error"] = traceback.format_exc()[-1500:]
                fused_ok = False
        step.kernels = step.kernels if fused_ok else None
        eager = decode(model, cache, tok, pos, rows, n_keys, step.kernels)[:3]
        graphed = step([5, 6, 7], lengths).clone()  # bucket 4, the same keys: same shapes
        out["graph_vs_eager_rel_err"] = rel(graphed, eager)
        # Step time by graph replay at 2k context: compare with the matmul-only times. With
        # the fused kernels, float matmuls by the skinny Triton kernel and by cuBLAS: the
        # engine then keeps the skinny kernel up to the largest batch at which it wins.
        at = PROMPT + 100
        kernels = step.kernels
        skinny_default = kernels.SKINNY_MAX_ROWS if kernels is not None else 0
        variants = {"": skinny_default}
        if kernels is not None and skinny_default > 0 and model.dtype != torch.float32:
            variants = {"": skinny_default, "_cublas": 0}
        for b in (1, 16, 64):
            big = SlotCache(model, b, MAX_SEQ) if b > cache.max_batch else cache
            for suffix, limit in variants.items():
                if kernels is not None:
                    kernels.SKINNY_MAX_ROWS = limit
                s = DecodeStep(model, big, fused=fused_ok)
                s([1] * b, [at] * b)
                sync()
                t0 = time.perf_counter()
                for _ in range(20):
                    s([1] * b, [at] * b)
                sync()
                out[f"step_ms_b{b}{suffix}"] = (time.perf_counter() - t0) / 20 * 1e3
                del s
            del big
        if kernels is not None:
            limit = 0
            for b in (1, 16, 64):
                if out[f"step_ms_b{b}"] <= out.get(f"step_ms_b{b}_cublas", float("inf")):
                    limit = b
                else:
                    break
            kernels.SKINNY_MAX_ROWS = limit if len(variants) > 1 else skinny_default
            out["skinny_max_rows_chosen"] = kernels.SKINNY_MAX_ROWS
            if fused_ok and model.config.quantization_bit == 4:
                try:
                    int4_step_variants(model, kernels, out)
                except Exception:
                    out["int4_variants_error"] = traceback.format_exc()[-1500:]
        prefill_checks(model, out)
    R[f"{tag}_checks"] = out
    print(tag, out, flush=True)
    return fused_ok


def int4_step_variants(model: ChatGLM2, kernels: Any, out: dict[str, Any]) -> None:
    """INT4 decode step by graph replay at 2.1k context: the engine's int4 matmul (the GEMV at
    one row, the tiled kernel above), "_gemv" (the GEMV at every row), "_tiled" (the tiled
    kernel at one row), and "_dequant": the previous path, every int4 weight dequantized
    whole each step, then cuBLAS. Skipped on a tree without the int4 matmul."""
    if not hasattr(kernels, "INT4_MATMUL_MAX_ROWS"):
        return
    from kbqa.chatglm import kernels as row_ops

    defaults = kernels.INT4_MATMUL_MAX_ROWS, row_ops.INT4_GEMV_MAX_ROWS
    variants = {"": defaults, "_dequant": (0, 0), "_tiled": (defaults[0], 0)}
    variants["_gemv"] = (defaults[0], 64)
    at = PROMPT + 100
    try:
        for b in (1, 2, 4, 8, 16, 24, 32, 64):
            big = SlotCache(model, b, MAX_SEQ)
            for suffix, (matmul_rows, gemv_rows) in variants.items():
                if (suffix == "_tiled" and b > 2) or (suffix == "_gemv" and b not in (2, 4)):
                    continue  # the same kernels as the default
                kernels.INT4_MATMUL_MAX_ROWS, row_ops.INT4_GEMV_MAX_ROWS = matmul_rows, gemv_rows
                s = DecodeStep(model, big, fused=True)
                s([1] * b, [at] * b)
                sync()
                t0 = time.perf_counter()
                for _ in range(20):
                    s([1] * b, [at] * b)
                sync()
                out[f"int4_step_ms_b{b}{suffix}"] = (time.perf_counter() - t0) / 20 * 1e3
                del s
            del big
    finally:
        kernels.INT4_MATMUL_MAX_ROWS, row_ops.INT4_GEMV_MAX_ROWS = defaults
    out["int4_matmul_configs"] = row_ops.int4_matmul_best_configs()
    out["gemv_configs"] = row_ops.gemv_best_configs()


def prefill_checks(model: ChatGLM2, out: dict[str, Any]) -> None:
    """The engine's prefill (several prompts in one pass, fused ops on CUDA) against the
    model's modules one prompt at a time: logits and time, 1 and 4 prompts of PROMPT tokens."""
    prompts_4 = [torch.tensor(p, device=DEVICE) for p in prompts(4, 7)]
    cache = SlotCache(model, 4, MAX_SEQ)
    prefiller = Prefiller(model, cache)
    out["prefill_fused"] = prefiller.fused

    def modules(ids: list[torch.Tensor]) -> torch.Tensor:
        found = [prefill(model, cache, p, 0, row, logits=True) for row, p in enumerate(ids)]
        return torch.stack([f.float() for f in found if f is not None])

    def together(ids: list[torch.Tensor]) -> torch.Tensor:
        got = prefiller([Segment(p, 0, row, logits=True) for row, p in enumerate(ids)])
        assert got is not None
        return got

    expected = modules(prompts_4[:2])
    got = together(prompts_4[:2])
    out["prefill_vs_modules_rel_err"] = rel(got, expected)
    out["prefill_argmax_agrees"] = bool((got.argmax(-1) == expected.argmax(-1)).all())
    for name, run in (("modules", modules), ("engine", together)):
        for n in (1, 4):
            run(prompts_4[:n])  # warm-up (cuBLAS heuristics, Triton compiles)
            sync()
            t0 = time.perf_counter()
            for _ in range(3):
                run(prompts_4[:n])
            sync()
            out[f"prefill_ms_{name}_{n}x{PROMPT}"] = (time.perf_counter() - t0) / 3 * 1e3


def baseline(model: ChatGLM2, tag: str, new_tokens: int) -> None:
    """One request at a time through model.generate: TTFT, ITL and tokens/s."""
    modes: list[dict[str, Any]] = [{}]
    if "fast" in inspect.signature(model.generate).parameters:
        modes = [{"fast": True}, {"fast": False}]
    ids = prompts(1, 99)[0]
    for extra in modes:
        name = f"{tag}_one_at_a_time" + {True: "_fast", False: "_eager"}.get(extra.get("fast"), "")
        opts: dict[str, Any] = {"temperature": 0.0, "eos_token_ids": [], **extra}
        # Warm up with the very same call: the cache is sized (and graphs captured) per length.
        list(model.generate(ids, max_new_tokens=new_tokens, **opts))
        sync()
        t0 = time.perf_counter()
        times = []
        for _ in model.generate(ids, max_new_tokens=new_tokens, **opts):
            times.append(time.perf_counter())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        R[name] = {
            "ttft_ms": (times[0] - t0) * 1e3,
            "itl_p50_ms": pct(gaps, 0.5) * 1e3,
            "itl_p95_ms": pct(gaps, 0.95) * 1e3,
            "decode_tok_s": len(gaps) / (times[-1] - times[0]),
        }
        print(name, R[name], flush=True)


def streams(engine: BatchEngine, n: int, tag: str) -> None:
    """N requests at once; metrics as in the module docstring."""
    engine.stats = EngineStats()
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    requests: list[Request] = [
        engine.submit(p, max_new_tokens=MAX_SEQ, stop_ids=[]) for p in prompts(n, n)
    ]
    deadline = time.perf_counter() + 240
    while not all(r.tokens for r in requests):
        if time.perf_counter() > deadline or any(r.done for r in requests):
            raise RuntimeError(f"streams did not all start: {[r.finish_reason for r in requests]}")
        time.sleep(0.01)
    joined = max(r.token_times[0] for r in requests)

    def after(r: Request) -> int:
        return len(r.token_times) - bisect.bisect_right(r.token_times, joined)

    # Poll rarely and cheaply: this thread shares the GIL with the engine's.
    while min(after(r) for r in requests) < STEADY:
        if time.perf_counter() > deadline or any(r.done for r in requests):
            raise RuntimeError("streams ended before the steady window closed")
        time.sleep(0.02)
    for r in requests:
        r.cancel()
    wait_all(requests, timeout=60)
    end = max(
        r.token_times[bisect.bisect_right(r.token_times, joined) + STEADY - 1] for r in requests
    )
    steady = sum(1 for r in requests for t in r.token_times if joined < t <= end)
    ttft = [r.token_times[0] - r.submitted_at for r in requests]
    gaps = [b - a for r in requests for a, b in itertools.pairwise(r.token_times)]
    steady_gaps = [
        b - a
        for r in requests
        for a, b in itertools.pairwise(r.token_times)
        if a > joined and b <= end
    ]
    R[f"{tag}_n{n}"] = {
        "streams": n,
        "steady_decode_tok_s": steady / (end - joined),
        "ttft_p50_ms": pct(ttft, 0.5) * 1e3,
        "ttft_p95_ms": pct(ttft, 0.95) * 1e3,
        "itl_p50_ms": pct(gaps, 0.5) * 1e3,
        "itl_p95_ms": pct(gaps, 0.95) * 1e3,
        "steady_itl_p50_ms": pct(steady_gaps, 0.5) * 1e3,
        "steady_itl_p95_ms": pct(steady_gaps, 0.95) * 1e3,
        "peak_gib": peak_gib(),
        "context_at_end": PROMPT + max(len(r.tokens) for r in requests),
        "decode_steps": engine.stats.decode_steps,
        "graphs": engine.decoder.graphs,
        "graph_prefills": engine.stats.graph_prefills,
    }
    print(f"{tag}_n{n}", R[f"{tag}_n{n}"], flush=True)


def engine_runs(model: ChatGLM2, tag: str, counts: list[int], fused: bool) -> None:
    engine = BatchEngine(model, max_batch=max(counts), max_seq=MAX_SEQ)
    if not fused:
        engine.decoder.kernels = None
    R[f"{tag}_engine"] = {
        "max_batch": engine.max_batch,
        "max_seq": MAX_SEQ,
        "prefill_chunk": engine.prefill_chunk,
        "max_prefill_tokens": engine.max_prefill_tokens,
        "cache_gib": engine.cache.nbytes / 2**30,
        "fused": engine.decoder.kernels is not None,
    }
    # Compile, tune and capture (decode graphs, prefill graphs) before any timing.
    t0 = time.perf_counter()
    engine.warm_up()
    R[f"{tag}_engine"]["warm_up_s"] = time.perf_counter() - t0
    graphs = engine.prefill_graphs
    R[f"{tag}_engine"]["prefill_graphs"] = graphs.graphs if graphs is not None else 0
    with engine:
        for n in counts:
            streams(engine, n, tag)


def table(tag: str, counts: list[int]) -> None:
    base = R.get(f"{tag}_one_at_a_time_fast") or R.get(f"{tag}_one_at_a_time", {})
    eager = R.get(f"{tag}_one_at_a_time_eager", {})
    one = R.get(f"{tag}_n1", {}).get("steady_decode_tok_s")
    print(f"\n{tag}: {R['device']}, prompt {PROMPT}, engine {R.get(f'{tag}_engine')}")
    for name, b in (("one-at-a-time (generate)", base), ("one-at-a-time (eager)", eager)):
        if b:
            print(f"  {name:26s} {b['decode_tok_s']:8.1f} tok/s  TTFT {b['ttft_ms']:7.1f} ms  "
                  f"ITL p50/p95 {b['itl_p50_ms']:.2f}/{b['itl_p95_ms']:.2f} ms")  # fmt: skip
    print("  N   tok/s    ×engine-1 ×generate  TTFT p50/p95 ms   ITL p50/p95 ms  steady ITL  GiB")
    for n in counts:
        r = R.get(f"{tag}_n{n}")
        if not r:
            continue
        tps = r["steady_decode_tok_s"]
        x1 = tps / one if one else float("nan")
        xb = tps / base["decode_tok_s"] if base else float("nan")
        print(f"  {n:<3d} {tps:8.1f} {x1:8.1f} {xb:9.1f}"
              f"  {r['ttft_p50_ms']:7.0f}/{r['ttft_p95_ms']:<7.0f}"
              f"  {r['itl_p50_ms']:6.2f}/{r['itl_p95_ms']:<6.2f}  {r['steady_itl_p50_ms']:6.2f}"
              f"  {r['peak_gib']:5.1f}")  # fmt: skip


def main() -> None:
    global DEVICE, PROMPT, MAX_SEQ, VOCAB
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="batching.json")
    parser.add_argument("--counts", default="1,4,16,64")
    parser.add_argument("--int4-counts", default="1,16")
    parser.add_argument("--skip-fp16", action="store_true", help="INT4 only")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default="chatglm2-6b")
    parser.add_argument("--prompt", type=int, default=PROMPT)
    args = parser.parse_args()
    DEVICE = args.device
    PROMPT, MAX_SEQ = args.prompt, args.prompt + 560
    VOCAB = 300 if args.config == "tiny" else 64000
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    counts = [int(c) for c in args.counts.split(",")]
    int4_counts = [int(c) for c in args.int4_counts.split(",") if c]
    R["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    R["torch"] = torch.__version__
    R["date"] = datetime.date.today().isoformat()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = ChatGLM2.from_config(args.config, device=DEVICE, dtype=dtype)
    R["build_s"] = time.perf_counter() - t0
    fused = [False]  # until the checks pass

    def check() -> None:
        fused[0] = checks(model, "fp16")

    if not args.skip_fp16:
        section("fp16 checks", check, args.out)
        section("fp16 baseline", lambda: baseline(model, "fp16", 64), args.out)
        section("fp16 engine", lambda: engine_runs(model, "fp16", counts, fused[0]), args.out)
        table("fp16", counts)
    if int4_counts:
        del model
        gc.collect()
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        model = ChatGLM2.from_config(args.config, device=DEVICE, dtype=dtype, quantize="int4")
        fused[0] = False

        def check_int4() -> None:
            fused[0] = checks(model, "int4")

        section("int4 checks", check_int4, args.out)
        section("int4 baseline", lambda: baseline(model, "int4", 32), args.out)
        section("int4 engine", lambda: engine_runs(model, "int4", int4_counts, fused[0]), args.out)
        table("int4", int4_counts)
    print("errors:", len(ERRORS))


if __name__ == "__main__":
    main()
