"""The one-row GEMV (kbqa/chatglm/kernels.py) over its launch configurations, for the decode
shapes of ChatGLM2-6B on a CUDA GPU: which (rows, columns per step, warps, K split, stages)
is fastest for each weight, against the configuration the package uses today (`TUNED`).

A decode step at one row reads every weight once, so these GEMVs set the single-stream rate:
28 layers × (qkv, h→4h with SwiGLU, dense, 4h→h) plus the fp16 output layer. Each is timed
alone by `triton.testing.do_bench` (median; it clears the L2 before each run, as the weights
of a decode step are never in L2), with random weights, and checked against the torch
reference of the same op (fused.py) before it is timed. Prints the best per weight and the
step time the GEMVs add up to; writes everything as JSON.

    PYTHONPATH=. python3 bench/chatglm_engine_gemv_gpu.py --out $OUT/gemv.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import triton
from torch import Tensor

from kbqa.chatglm import kernels
from kbqa.chatglm.quantize import dequantize_weight, pack_int4

LAYERS = 28
DEVICE = "cuda"


@dataclass(frozen=True)
class Shape:
    name: str
    bits: int
    n: int  # outputs (with glu the weight has 2n rows)
    k: int
    norm: bool
    glu: bool
    accumulate: bool  # added into the fp32 residual stream (the only launches that split K)
    bias: bool
    per_step: int  # launches per decode step
    rows: int = 1  # 1: the GEMV (kernels.gemv); 16: the tiled int4 matmul (int4_linear)


SHAPES = [
    Shape("qkv", 4, 4608, 4096, True, False, False, True, LAYERS),
    Shape("h_to_4h", 4, 13696, 4096, True, True, False, False, LAYERS),
    Shape("dense", 4, 4096, 4096, False, False, True, False, LAYERS),
    Shape("h4_to_h", 4, 4096, 13696, False, False, True, False, LAYERS),
    Shape("qkv", 16, 4608, 4096, True, False, False, True, LAYERS),
    Shape("h_to_4h", 16, 13696, 4096, True, True, False, False, LAYERS),
    Shape("dense", 16, 4096, 4096, False, False, True, False, LAYERS),
    Shape("h4_to_h", 16, 4096, 13696, False, False, True, False, LAYERS),
    Shape("output", 16, 65024, 4096, True, False, False, False, 1),
    # 16 streams of INT4: the tiled int4 matmul, SwiGLU and norms apart (no fusions).
    Shape("qkv", 4, 4608, 4096, False, False, False, True, LAYERS, 16),
    Shape("h_to_4h", 4, 27392, 4096, False, False, False, False, LAYERS, 16),
    Shape("dense", 4, 4096, 4096, False, False, True, False, LAYERS, 16),
    Shape("h4_to_h", 4, 4096, 13696, False, False, True, False, LAYERS, 16),
]


def configs(shape: Shape) -> list[tuple[int, int, int, int, int]]:
    """(BN, BK, warps, SPLIT, stages): a weight tile of 2–32 KB per step, 128–4,096 programs,
    K split only where the result is accumulated. Shuffled (seed 0): the sweep may stop at
    its time budget, and should have seen every corner by then."""
    if shape.rows > 1:
        return matmul_configs()
    found = []
    splits = (1, 2, 4, 8) if shape.accumulate else (1,)
    for bn, bk, warps, split in itertools.product(
        (4, 8, 16, 32, 64), (128, 256, 512, 1024, 2048), (4, 8), splits
    ):
        tile = bn * bk * shape.bits // 8
        programs = -(-shape.n // bn) * split
        if 2048 <= tile <= 32768 and 128 <= programs <= 4096 and bk * split <= shape.k:
            found.append((bn, bk, warps, split, 3))
    random.Random(0).shuffle(found)
    return found


def matmul_configs() -> list[tuple[int, int, int, int, int]]:
    """(BM, BN, BW, warps, stages) of the tiled int4 matmul: 2–32 KB of words per step."""
    found = [
        (16, bn, bw, warps, stages)
        for bn, bw, warps, stages in itertools.product(
            (16, 32, 64, 128), (16, 32, 64, 128), (4, 8), (2, 3, 4, 5)
        )
        if 512 <= bn * bw <= 8192
    ]
    random.Random(0).shuffle(found)
    return found


def make(shape: Shape, copies: int) -> dict[str, Any]:
    """Random weights (copies enough that no run reads the last one's from L2), x, norm.
    x is the fp32 residual stream where the GEMV normalises it, else an fp16 activation."""
    dev = DEVICE
    rows = 2 * shape.n if shape.glu else shape.n
    ws, scales = [], []
    for _ in range(copies):
        if shape.bits == 4:
            q = torch.randint(-7, 8, (rows, shape.k), dtype=torch.int8, device=dev)
            ws.append(pack_int4(q).view(torch.int32))
            scales.append((torch.rand(rows, device=dev) * 0.02 + 0.001).half())
        else:
            ws.append((torch.randn(rows, shape.k, device=dev) * 0.02).half())
    x = torch.randn(shape.rows, shape.k, device=dev)
    return {
        "w": ws,
        "scale": scales,
        "bias": (torch.randn(rows, device=dev) * 0.1).half() if shape.bias else None,
        "x": x if shape.norm else x.half(),
        "norm": (torch.rand(shape.k, device=dev) + 0.5).half() if shape.norm else None,
    }


Config = tuple[int, int, int, int, int]


def launch(shape: Shape, d: dict[str, Any], i: int, cfg: Config, out: Tensor, warm: bool) -> None:
    if shape.rows > 1:
        return launch_matmul(shape, d, i, cfg, out, warm)
    bn, bk, warps, split, stages = cfg
    args = (
        d["w"][i],
        d["scale"][i] if d["scale"] else out,
        d["bias"] if d["bias"] is not None else out,
        d["x"],
        d["norm"] if d["norm"] is not None else out,
        out,
        shape.n,
        1e-5,
    )
    meta = {"K": shape.k, "BITS": shape.bits, "NORM": shape.norm, "GLU": shape.glu}
    meta |= {"HAS_BIAS": shape.bias, "ACCUM": shape.accumulate, "BN": bn, "BK": bk}
    meta |= {"SPLIT": split, "num_warps": warps, "num_stages": stages}
    grid = (1, triton.cdiv(shape.n, bn), split)
    if warm:
        kernels._gemv_kernel.warmup(*args, grid=grid, **meta)
    else:
        kernels._gemv_kernel[grid](*args, **meta)


def launch_matmul(
    shape: Shape, d: dict[str, Any], i: int, cfg: Config, out: Tensor, warm: bool
) -> None:
    bm, bn, bw, warps, stages = cfg
    scale = d["scale"][i]
    bias = d["bias"] if d["bias"] is not None else scale
    args = (d["x"], d["w"][i], scale, bias, out, shape.rows, shape.n)
    meta = {"K": shape.k, "M_PAD": 16, "HAS_BIAS": shape.bias, "ACCUM": shape.accumulate}
    meta |= {"BM": bm, "BN": bn, "BW": bw, "num_warps": warps, "num_stages": stages}
    grid = (triton.cdiv(shape.n, bn), triton.cdiv(shape.rows, bm))
    if warm:
        kernels._int4_matmul_kernel.warmup(*args, grid=grid, **meta)
    else:
        kernels._int4_matmul_kernel[grid](*args, **meta)


def reference(shape: Shape, d: dict[str, Any]) -> Tensor:
    """The op in fp32 torch for weight copy 0: [1, N]."""
    w = d["w"][0]
    if shape.bits == 4:
        w = dequantize_weight(w.view(torch.int8), d["scale"][0], 4, torch.float32)
    h = d["x"].float()
    if shape.norm:
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * d["norm"].float()
    y = h @ w.float().t()
    if d["bias"] is not None:
        y += d["bias"].float()
    if shape.glu:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y


def sweep(shape: Shape, tuned: Config | None, seconds: float) -> dict[str, Any]:
    nbytes = shape.n * (2 if shape.glu else 1) * shape.k * shape.bits // 8
    d = make(shape, min(12, max(2, -(-300_000_000 // nbytes))))
    out_dtype = torch.float32 if shape.accumulate or shape.name == "output" else torch.float16
    out = torch.zeros(shape.rows, shape.n, dtype=out_dtype, device=DEVICE)
    want = reference(shape, d)
    cfgs = configs(shape)
    if tuned is not None:
        cfgs = [tuned] + [c for c in cfgs if c != tuned]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    pool = concurrent.futures.ThreadPoolExecutor(16)  # compiles overlap (ptxas is a process)
    for start in range(0, len(cfgs), 16):
        if time.perf_counter() - t0 > seconds:
            break
        group = cfgs[start : start + 16]
        warmed = list(pool.map(lambda c: _try(lambda: launch(shape, d, 0, c, out, True)), group))
        for cfg, ok in zip(group, warmed, strict=True):
            if ok is not True:
                results.append({"cfg": cfg, "error": ok})
                continue
            out.zero_()  # accumulating launches add into it
            # Compiling does not check the launch's resources: a tile that needs more shared
            # memory than the card has fails here (OutOfResources), and is recorded like any
            # other failure (uncaught, it ended every 16-row int4 sweep of 2026-12-07).
            launched = _try(lambda cfg=cfg: launch(shape, d, 0, cfg, out, False))
            if launched is not True:
                results.append({"cfg": cfg, "error": launched})
                continue
            err = float((out.float() - want).norm() / want.norm())
            if not err < 5e-3:  # NaN fails too
                results.append({"cfg": cfg, "error": f"rel {err}"})
                continue
            turn = itertools.count()

            def run(cfg: Config = cfg, turn: Any = turn) -> None:
                launch(shape, d, next(turn) % len(d["w"]), cfg, out, False)

            us = triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median") * 1000
            results.append({"cfg": cfg, "us": round(us, 2), "rel": round(err, 6)})
    pool.shutdown()
    timed = sorted((r for r in results if "us" in r), key=lambda r: r["us"])
    # The best few again with 2 and 4 pipeline stages.
    for r in timed[:4] if shape.rows == 1 else []:
        for stages in (2, 4):
            cfg = (*r["cfg"][:4], stages)
            if _try(lambda cfg=cfg: launch(shape, d, 0, cfg, out, True)) is True:
                out.zero_()
                if _try(lambda cfg=cfg: launch(shape, d, 0, cfg, out, False)) is not True:
                    continue
                err = float((out.float() - want).norm() / want.norm())
                if err < 5e-3:
                    turn = itertools.count()
                    us = triton.testing.do_bench(
                        lambda cfg=cfg, turn=turn: launch(
                            shape, d, next(turn) % len(d["w"]), cfg, out, False
                        ),
                        warmup=10, rep=40, return_mode="median",
                    ) * 1000  # fmt: skip
                    results.append({"cfg": cfg, "us": round(us, 2), "rel": round(err, 6)})
    timed = sorted((r for r in results if "us" in r), key=lambda r: r["us"])
    best = timed[0] if timed else None
    now = next((r for r in results if r["cfg"] == tuned and "us" in r), None)
    return {
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 1),
        "configs_tried": len(results),
        "configs_all": len(cfgs),
        "failed": len(results) - len(timed),
        "tuned_now": tuned,
        "now": now,
        "best": best,
        "now_tb_s": round(nbytes / now["us"] / 1e6, 3) if now else None,
        "best_tb_s": round(nbytes / best["us"] / 1e6, 3) if best else None,
        "top": timed[:8],
        "first_error": next((r for r in results if "error" in r), None),
    }


def _try(fn: Any) -> Any:
    try:
        fn()
        return True
    except Exception as e:  # recorded with its config
        return repr(e)[-300:]


def tuned_now(shape: Shape) -> Config | None:
    """The configuration the kernels launch for this shape today (None: they autotune)."""
    if shape.rows > 1:
        return kernels.INT4_TUNED.get((16, shape.n, shape.k))
    key = (shape.bits, shape.n, shape.k)
    tuned = None if shape.accumulate else kernels.TUNED_STORE.get(key)
    tuned = tuned or kernels.TUNED.get(key)
    if tuned is None or (tuned[3] > 1 and not shape.accumulate):
        return None
    return tuned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="chatglm_engine_gemv.json")
    parser.add_argument("--bits", type=int, choices=[4, 16])
    parser.add_argument("--seconds", type=float, default=40, help="per weight, then it stops")
    parser.add_argument("--keys", nargs="*", help="only weights whose key holds one of these")
    args = parser.parse_args()
    found: dict[str, Any] = {"card": torch.cuda.get_device_name()}
    for shape in SHAPES:
        if args.bits not in (None, shape.bits):
            continue
        key = f"{shape.name}.{shape.bits}" + (f".rows{shape.rows}" if shape.rows > 1 else "")
        if args.keys and not any(part in key for part in args.keys):
            continue
        try:
            found[key] = sweep(shape, tuned_now(shape), args.seconds)
            table = "INT4_TUNED" if shape.rows > 1 else "TUNED"
            row_key = 16 if shape.rows > 1 else shape.bits
            found[key]["table"] = [table, [row_key, shape.n, shape.k]]
        except Exception as e:  # recorded; the next weight still runs
            found[key] = {"error": repr(e)[-1000:]}
        r = found[key]
        print(f"[{key}] now {r.get('now')} {r.get('now_tb_s')} TB/s; best {r.get('best')} "
              f"{r.get('best_tb_s')} TB/s ({r.get('configs_tried')}/{r.get('configs_all')} "
              f"in {r.get('seconds')} s)", flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(found, f, indent=1)
    # What the GEMVs of one decode step add up to (the fp16 output layer in both).
    for bits in (4, 16):
        now = best = 0.0
        for shape in SHAPES:
            r = found.get(f"{shape.name}.{shape.bits}", {})
            if shape.rows == 1 and (shape.bits == bits or shape.name == "output") and r.get("best"):
                best += r["best"]["us"] * shape.per_step
                now += (r["now"] or r["best"])["us"] * shape.per_step
        found[f"step_gemv_us_int{bits}" if bits == 4 else "step_gemv_us_fp16"] = {
            "now": round(now, 1),
            "best": round(best, 1),
        }
    with open(args.out, "w") as f:
        json.dump(found, f, indent=1)
    print(json.dumps({k: v for k, v in found.items() if k.startswith("step")}))


if __name__ == "__main__":
    main()
