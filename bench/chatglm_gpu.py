"""ChatGLM2-6B on one CUDA GPU: the eager model (baseline) against the fast path (fast.py).

Full-size random weights, batch 1. Measures, for FP16 and INT4: prefill of a 2048-token
prompt, decode at 2k context (CUDA-graph replay, and generate() end to end), logits error
against the eager model and a float32 reference, the GEMVs one by one (bandwidth, error), and
peak memory generating to 8k tokens. Prints a table last; writes everything as JSON.

    PYTHONPATH=. python3 bench/chatglm_gpu.py --out $OUT/chatglm_gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kbqa.chatglm import ChatGLM2, fast, fused
from kbqa.chatglm.config import PRESETS
from kbqa.chatglm.fast import EagerSteps, FastSteps

CTX, NEW, LONG = 2048, 128, 8192
CONFIG: str | dict[str, Any] = "chatglm2-6b"
DEV, DTYPE = "cuda", torch.float16
R: dict[str, Any] = {}
ERRORS: list[str] = []


def run(name: str, fn: Callable[[], None], out: str) -> None:
    """One section; a failure is recorded and the next section still runs."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:
        ERRORS.append(f"{name}: {traceback.format_exc()[-1500:]}")
        print(ERRORS[-1], flush=True)
    R.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
    R["errors"] = ERRORS
    with open(out, "w") as f:
        json.dump(R, f, indent=1, default=str)
    print(f"[{name}] {time.perf_counter() - t0:.1f}s", flush=True)


def gpu_ms(fn: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn by CUDA events."""
    for _ in range(warmup):
        fn()
    if DEV == "cpu":  # --dry-run
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1000 / reps
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def graph_ms(fn: Callable[[], object], reps: int = 50) -> float:
    """Milliseconds per call of fn replayed from a CUDA graph."""
    if DEV == "cpu":
        return gpu_ms(fn, reps=2, warmup=1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return gpu_ms(graph.replay, reps=5, warmup=1) if reps <= 5 else _many(graph, reps)


def _many(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def copy_bandwidth() -> None:
    x = torch.empty(2**30 if DEV == "cuda" else 2**20, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    ms = gpu_ms(lambda: y.copy_(x), reps=10)
    R["copy_TBps"] = round(2 * x.numel() / ms / 1e9, 3)  # bytes read + written


def weight_bytes(model: ChatGLM2) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def step_bytes(steps: FastSteps, ctx: int) -> int:
    """Bytes a decode step must read: every linear, the output layer, one embedding row, and
    the keys and values of ctx positions."""
    lws = [steps.output] + [
        lw for lay in steps.layers for lw in (lay.qkv, lay.dense, lay.h_to_4h, lay.h4_to_h)
    ]
    total = sum(t.numel() * t.element_size() for lw in lws for t in lw.tensors())
    g, _, d = steps.layers[0].k_cache.shape
    return total + steps.embed.shape[1] * 2 + len(steps.layers) * 2 * g * ctx * d * 2


def gemvs(model: ChatGLM2, tag: str) -> None:
    """Each GEMV shape alone: error against float64, time rotating over the 28 layers' weights
    (so that no weight is read from L2), and cuBLAS on the same shape for fp16."""
    steps = FastSteps(model, graph=False)
    norm = steps.layers[0].norm1
    cases = [
        ("qkv", "norm", [lay.qkv for lay in steps.layers]),
        ("dense", "res", [lay.dense for lay in steps.layers]),
        ("h_to_4h", "glu", [lay.h_to_4h for lay in steps.layers]),
        ("4h_to_h", "res", [lay.h4_to_h for lay in steps.layers]),
        ("output", "norm", [steps.output]),
    ]
    table = {}
    for name, kind, lws in cases:
        k, n = lws[0].in_features, lws[0].out_features
        x = torch.randn(k, device=DEV, dtype=DTYPE)
        res = torch.randn(n // 2 if kind == "glu" else n, device=DEV)
        opts: dict[str, Any] = {"glu": kind == "glu"}
        opts["norm"] = norm if kind in ("norm", "glu") else None
        opts["out_dtype"] = None if kind == "res" else torch.float32
        acc = res if kind == "res" else None
        got = fused.linear_vec(lws[0], x, accumulate=None if acc is None else acc.clone(), **opts)
        xd = x.double()
        if kind in ("norm", "glu"):
            xd = xd * torch.rsqrt(xd.pow(2).mean() + norm.eps) * norm.weight.double()
        want = lws[0].dequantized(slice(None), torch.float64) @ xd
        want += lws[0].bias.double() if lws[0].bias is not None else 0
        if kind == "glu":
            want = F.silu(want[: n // 2]) * want[n // 2 :]
        want += res.double() if kind == "res" else 0
        opts["accumulate"] = acc

        def each(lws: list[Any] = lws, x: torch.Tensor = x, opts: dict[str, Any] = opts) -> None:
            for lw in lws:
                fused.linear_vec(lw, x, **opts)

        us = graph_ms(each, reps=20) * 1000 / len(lws)
        nbytes = sum(t.numel() * t.element_size() for t in lws[0].tensors())
        row = {"N": n, "K": k, "err": rel(got, want), "us": round(us, 2)}
        row["TBps"] = round(nbytes / us / 1e6, 3)
        if lws[0].bits == 16:
            ws = [lw.weight for lw in lws]
            xs = x.view(1, -1)

            def cublas(ws: list[Any] = ws, xs: torch.Tensor = xs) -> None:
                for w in ws:
                    F.linear(xs, w)

            cu = graph_ms(cublas, reps=20) * 1000 / len(ws)
            row["cublas_us"] = round(cu, 2)
        table[name] = row
    R[f"{tag}_gemv"] = table


def step_breakdown(steps: FastSteps, tag: str) -> None:
    """GPU time by kernel for one eagerly launched step (launch gaps excluded)."""
    if DEV == "cpu":
        return
    token = torch.tensor([5], device=DEV)
    pos = torch.tensor([CTX], device=DEV)
    steps.step(token, pos)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        steps.step(token, pos)
        torch.cuda.synchronize()
    by_name: dict[str, float] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", 0) or getattr(evt, "cuda_time_total", 0)
        if us and not evt.key.startswith("cuda"):
            by_name[evt.key[:60]] = round(us / 1000, 4)
    R[f"{tag}_kernels_ms"] = dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


def speed(model: ChatGLM2, tag: str, eager_steps: int) -> None:
    """Prefill and decode at CTX, eager and fast, plus logits errors between them."""
    torch.manual_seed(1)
    vocab = model.config.padded_vocab_size
    ids = torch.randint(0, vocab, (CTX + 8,), device=DEV)
    prompt, forced = ids[:CTX], ids[CTX:]
    model.setup_caches(1, CTX + 256)
    eager = EagerSteps(model)
    with torch.no_grad():
        R[f"{tag}_eager_prefill_ms"] = gpu_ms(lambda: eager.prefill(prompt), reps=3, warmup=1)
        ref = [eager.prefill(prompt)] + [
            eager.decode(t, CTX + i) for i, t in enumerate(forced[:eager_steps])
        ]
        R[f"{tag}_eager_decode_ms"] = gpu_ms(lambda: eager.decode(forced[0], CTX), reps=5)

        steps = FastSteps(model)
        R[f"{tag}_fast_prefill_ms"] = gpu_ms(lambda: steps.prefill(prompt), reps=5, warmup=2)
        got = [steps.prefill(prompt)] + [
            steps.decode(t, CTX + i).clone() for i, t in enumerate(forced[:eager_steps])
        ]
        R[f"{tag}_fast_vs_eager_err"] = [rel(g, r) for g, r in zip(got, ref, strict=True)]
        steps.prefill_chunk, fast.SINGLE_PREFILL = 512, 512
        R[f"{tag}_fast_prefill_chunk512_ms"] = gpu_ms(lambda: steps.prefill(prompt), reps=3)
        fast.SINGLE_PREFILL = 2048
        if steps._graph is not None:
            R[f"{tag}_graph_step_ms"] = _many(steps._graph, 200)
        else:
            R[f"{tag}_graph_step_ms"] = gpu_ms(lambda: steps.decode(forced[0], CTX), reps=3)
        R[f"{tag}_step_bytes"] = step_bytes(steps, CTX)

        def loop(host_sync: bool, n: int = 50) -> float:
            """Greedy decode steps back to back, with or without reading each token."""
            token = forced[0]
            sync()
            t0 = time.perf_counter()
            for i in range(n):
                token = steps.decode(token, CTX + i).argmax()
                if host_sync:
                    int(token)
            sync()
            return (time.perf_counter() - t0) * 1000 / n

        R[f"{tag}_loop_ms"] = {"host_sync": loop(True), "no_sync": loop(False)}
        step_breakdown(steps, tag)

    # End to end: generate() picks the fast path on CUDA by itself. The first fast run
    # captures the decode graph (once per cache size), the second shows the steady state.
    for mode in ("fast_first", "fast", "eager"):
        n = 16 if mode == "eager" else NEW
        t0 = time.perf_counter()
        first = 0.0
        out: list[int] = []
        for tok in model.generate(
            prompt, max_new_tokens=n, temperature=0, eos_token_ids=[], fast=mode != "eager"
        ):
            if not out:
                sync()
                first = time.perf_counter()
            out.append(tok)
        total = time.perf_counter() - t0
        R[f"{tag}_generate_{mode}"] = {
            "tokens": len(out),
            "first_token_ms": round((first - t0) * 1000, 1),
            "decode_tok_s": round((len(out) - 1) / (total - (first - t0)), 1),
        }
        if mode == "fast":  # generate() runs a step ahead of the host: same tokens as step by step
            with torch.no_grad():
                again = fast.decode_steps(model, True)
                token = again.prefill(prompt).argmax()
                plain = [int(token)]
                for i in range(min(32, len(out)) - 1):
                    token = again.decode(token, CTX + i).argmax()
                    plain.append(int(token))
            R[f"{tag}_generate_matches_steps"] = plain == out[: len(plain)]


def accuracy(model: ChatGLM2, tag: str) -> None:
    """Fast-path logits against a float32 copy of the same weights (int4: dequantized)."""
    torch.manual_seed(2)
    ids = torch.randint(0, model.config.padded_vocab_size, (72,), device=DEV)
    model.setup_caches(1, 256)
    steps = FastSteps(model)
    with torch.no_grad():
        got = [steps.prefill(ids[:64])] + [
            steps.decode(t, 64 + i).clone() for i, t in enumerate(ids[64:71])
        ]
        eager_fp16 = model(ids.view(1, -1))[0, 63:71].float()
        torch.backends.cuda.matmul.allow_tf32 = False
        model.float()
        want = model(ids.view(1, -1))[0, 63:71]  # [8, V]
        model.to(DTYPE)
        model.transformer.reset_rope(DEV)  # .half() rounded the fp32 rotary table too
    fast._CACHE.clear()
    R[f"{tag}_fast_vs_fp32_err"] = [rel(g, w) for g, w in zip(got, want, strict=True)]
    R[f"{tag}_eager_vs_fp32_err"] = [rel(e, w) for e, w in zip(eager_fp16, want, strict=True)]


def memory(model: ChatGLM2, tag: str, eager: bool) -> None:
    """Peak allocated generating to LONG tokens (prompt LONG - 256, then 256 new), twice (the
    first run also captures the decode graph), then by phase."""
    torch.manual_seed(3)
    ids = torch.randint(0, model.config.padded_vocab_size, (LONG - 256,), device=DEV)

    def fresh() -> float:
        if DEV == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 1e9
        return 0.0

    def peak() -> float:
        return round(torch.cuda.max_memory_allocated() / 1e9 if DEV == "cuda" else 0.0, 4)

    for mode in ("fast", "eager") if eager else ("fast",):
        model.setup_caches(1, 16)  # drop any large cache first
        fast._CACHE.clear()  # and the steps (with graphs) that hold on to it
        gc.collect()
        # Eager decodes only 4 tokens (its peak is the prefill); both get the 8192-slot cache.
        new = 256 if mode == "fast" else 4
        opts: dict[str, Any] = {"max_new_tokens": new, "temperature": 0, "eos_token_ids": []}
        for run in ("first", "warm") if mode == "fast" else ("first",):
            base = fresh()
            t0 = time.perf_counter()
            n = len(list(model.generate(ids, fast=mode == "fast", **opts)))
            assert n == new
            R[f"{tag}_peak_8k_{mode}_{run}_GB"] = peak()
            R[f"{tag}_8k_{mode}_{run}_s"] = round(time.perf_counter() - t0, 2)
            R[f"{tag}_8k_{mode}_{run}_base_GB"] = round(base, 4)
        if mode == "fast":
            phases(model, ids, tag, fresh, peak)


def phases(
    model: ChatGLM2,
    ids: torch.Tensor,
    tag: str,
    fresh: Callable[[], float],
    peak: Callable[[], float],
) -> None:
    """Peaks of prefill and decode alone, on the steps generate() just used."""
    steps = fast._CACHE[model][1]
    with torch.no_grad():
        fresh()
        steps.prefill(ids)
        R[f"{tag}_peak_8k_prefill_GB"] = peak()
        fresh()
        for i in range(8):
            steps.decode(ids[i], LONG - 256 + i)
        R[f"{tag}_peak_8k_decode_GB"] = peak()


def foreign_blocks(model: ChatGLM2, tag: str) -> None:
    """Allocated blocks that hold none of the model's tensors (weights, rope, cache): size and
    where they were allocated (needs memory history recording)."""
    own = {t.data_ptr() for t in model.state_dict().values()}
    own |= {b.data_ptr() for b in model.buffers()}
    found = []
    for seg in torch.cuda.memory_snapshot():
        addr = seg["address"]
        for block in seg["blocks"]:
            if block["state"] == "active_allocated" and addr not in own:
                frames = block.get("frames") or []
                names = [f"{f.get('name', '')}" for f in frames[:12]]
                where = " < ".join(n for n in names if n)[:300]
                found.append({"MB": round(block["size"] / 1e6, 2), "where": where})
            addr += block["size"]
    found.sort(key=lambda b: -b["MB"])
    R[f"{tag}_foreign_blocks"] = found[:12]
    R[f"{tag}_foreign_MB"] = round(sum(b["MB"] for b in found), 2)


def memory_only(out: str) -> None:
    """Peaks at 8k in a process that ran nothing else, at the default chunk sizes and at
    smaller ones, and what else is allocated besides the model."""
    torch.cuda.memory._record_memory_history(max_entries=100000)
    defaults = fast.PREFILL_CHUNK, fast.MLP_ROWS
    for quantize in (None, "int4"):
        tag = quantize or "fp16"
        model = ChatGLM2.from_config(CONFIG, device=DEV, dtype=DTYPE, quantize=quantize)
        for chunk, mlp_rows in ((512, 256), (256, 128)):
            fast.PREFILL_CHUNK, fast.MLP_ROWS = chunk, mlp_rows
            name = f"{tag}_c{chunk}"
            run(name, functools.partial(memory, model, name, False), out)
            run(f"{name}_blocks", functools.partial(foreign_blocks, model, name), out)
        del model
        fast._CACHE.clear()
        gc.collect()
        torch.cuda.empty_cache()
    fast.PREFILL_CHUNK, fast.MLP_ROWS = defaults


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="chatglm_gpu.json")
    parser.add_argument("--skip-int4", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--memory-only", action="store_true", help="the 8k peaks alone")
    parser.add_argument("--speed-only", action="store_true", help="prefill and decode speed")
    args = parser.parse_args()
    if args.dry_run:
        global CTX, NEW, LONG, CONFIG, DEV, DTYPE
        CTX, NEW, LONG, DEV, DTYPE = 100, 8, 512, "cpu", torch.float32
        CONFIG = {**PRESETS["tiny"], "padded_vocab_size": 300, "ffn_hidden_size": 96}
    import triton

    R["card"] = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    R["date"] = datetime.date.today().isoformat()
    R["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
    if args.memory_only:
        memory_only(args.out)
        print(json.dumps(R, indent=1, default=str))
        return
    run("bandwidth", copy_bandwidth, args.out)
    if args.speed_only:
        for quantize in (None, "int4"):
            model = ChatGLM2.from_config(CONFIG, device=DEV, dtype=DTYPE, quantize=quantize)
            run(
                f"{quantize or 'fp16'}_speed",
                functools.partial(speed, model, quantize or "fp16", 2),
                args.out,
            )
            del model
            fast._CACHE.clear()
            gc.collect()
        print(json.dumps(R, indent=1, default=str))
        return

    model = ChatGLM2.from_config(CONFIG, device=DEV, dtype=DTYPE)
    R["fp16_weight_GB"] = weight_bytes(model) / 1e9
    run("fp16_speed", lambda: speed(model, "fp16", eager_steps=4), args.out)
    # Memory before the GEMV section: its cuBLAS comparisons run on side streams, and cuBLAS
    # keeps a workspace (~33 MB, counted as allocated) for every stream it has seen.
    run("fp16_memory", lambda: memory(model, "fp16", eager=True), args.out)
    run("fp16_accuracy", lambda: accuracy(model, "fp16"), args.out)
    run("fp16_gemv", lambda: gemvs(model, "fp16"), args.out)
    from kbqa.chatglm import kernels

    R["gemv_configs"] = kernels.gemv_best_configs()
    R["gemv_tuned"] = {str(key): value for key, value in kernels.TUNED.items()}
    del model
    fast._CACHE.clear()
    if DEV == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_int4:
        model = ChatGLM2.from_config(CONFIG, device=DEV, dtype=DTYPE, quantize="int4")
        R["int4_weight_GB"] = weight_bytes(model) / 1e9
        run("int4_speed", lambda: speed(model, "int4", eager_steps=2), args.out)
        run("int4_memory", lambda: memory(model, "int4", eager=False), args.out)
        run("int4_accuracy", lambda: accuracy(model, "int4"), args.out)
        run("int4_gemv", lambda: gemvs(model, "int4"), args.out)
        R["gemv_configs"] = kernels.gemv_best_configs()
    run("done", lambda: None, args.out)
    summary = {k: v for k, v in R.items() if not isinstance(v, dict) or k.endswith("generate")}
    for key, value in summary.items():
        print(f"{key:34s} {value}")
    for key in ("fp16_gemv", "int4_gemv", "fp16_kernels_ms", "int4_kernels_ms"):
        print(key, json.dumps(R.get(key), default=str))


if __name__ == "__main__":
    main()
