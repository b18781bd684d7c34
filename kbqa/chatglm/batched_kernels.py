"""Triton kernels for the batched decode step (batched.py): the row-wise work between the
matmuls, which in plain PyTorch is ~45 small launches per layer and, at one token per row,
costs more than the attention.

- add_rmsnorm: x + residual (rounded to x's dtype, as the model's fp16 add is) and its
  RMSNorm, in fp32 as the model's RMSNorm computes it; swiglu: silu(gate) * up with the
  model's two roundings; dequant_int4: the checkpoint's int4 weights unpacked to floats. All
  three run kernels.py's kernels (the fast path's), for a batch of rows.
- rope_cache: rotate q (in place) and k of every row by that row's position, and write k and
  v into the KV cache at (that row's cache row, its slot): one program per (row, head).
- skinny_linear: x · Wᵀ (+ bias) for a few rows, reading each weight once; int4_linear
  (kernels.py, shared with the fast path's GEMV) the same from packed int4 weights.
- attn_decode_rows (attn_kernels.py): each row's attention over its own cache row.

Imported only where the kernels run (triton_use.py): triton is not a dependency of
kbqa.chatglm. Launchers take contiguous tensors and check nothing; batched.py owns shapes.
"""
# Triton reads parameter annotations: `tl.constexpr` makes a parameter a compile-time constant;
# `tl.tensor` (a name Triton can resolve inside a kernel, unlike typing.Any once annotations
# are strings) changes nothing.

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kbqa.chatglm import kernels as row_ops
from kbqa.chatglm.attn_kernels import attn_decode_rows
from kbqa.chatglm.kernels import int4_linear
from kbqa.chatglm.quantize import dequantize_weight
from kbqa.chatglm.triton_use import interpreted

__all__ = [
    "add_rmsnorm",
    "attn_decode_rows",
    "dequant_int4",
    "int4_linear",
    "rope_cache",
    "skinny_linear",
    "swiglu",
]


def add_rmsnorm(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """x, residual [B, H] → (x + residual, RMSNorm(x + residual) * weight), x's dtype."""
    x_out = torch.empty_like(x) if residual is not None else x
    h = torch.empty_like(x)
    row_ops.rmsnorm(x, residual, weight, eps, x_out, h)
    return x_out, h


@triton.jit
def _rope_cache_kernel(
    qkv_ptr: tl.tensor,
    rope_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    rows_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    prefix: tl.tensor,
    slots: tl.tensor,
    N: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
) -> None:
    b = tl.program_id(0)
    head = tl.program_id(1)  # 0..N-1: query heads, N..N+G-1: key groups, then value groups
    width: tl.constexpr = (N + 2 * G) * D
    src = qkv_ptr + b * width + head * D
    pos = tl.load(pos_ptr + b)
    cache_row = tl.load(rows_ptr + b)
    if head < N + G:
        # Pairs (2i, 2i+1) of the first half rotate by angle i of this position (fp32).
        i = tl.arange(0, D // 4)
        even = tl.load(src + 2 * i).to(tl.float32)
        odd = tl.load(src + 2 * i + 1).to(tl.float32)
        cos = tl.load(rope_ptr + pos * (D // 2) + 2 * i)
        sin = tl.load(rope_ptr + pos * (D // 2) + 2 * i + 1)
        new_even = (even * cos - odd * sin).to(qkv_ptr.dtype.element_ty)
        new_odd = (odd * cos + even * sin).to(qkv_ptr.dtype.element_ty)
        if head < N:
            tl.store(src + 2 * i, new_even)
            tl.store(src + 2 * i + 1, new_odd)
        else:
            g = head - N
            dst = k_ptr + ((cache_row * G + g) * slots + prefix + pos) * D
            tl.store(dst + 2 * i, new_even)
            tl.store(dst + 2 * i + 1, new_odd)
            rest = tl.arange(0, D // 2)
            tl.store(dst + D // 2 + rest, tl.load(src + D // 2 + rest))
    else:
        g = head - N - G
        dst = v_ptr + ((cache_row * G + g) * slots + prefix + pos) * D
        cols = tl.arange(0, D)
        tl.store(dst + cols, tl.load(src + cols))


def rope_cache(
    qkv: Tensor,
    rope: Tensor,
    pos: Tensor,
    rows: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix: int,
    heads: int,
) -> None:
    """qkv [B, (N + 2G) * D]: rotate its q in place; write rotated k and v into k_cache,
    v_cache [R, G, slots, D] at row rows[b], slot prefix + pos[b]. rope [T, D/4, 2] fp32."""
    _, groups, slots, d = k_cache.shape
    _rope_cache_kernel[(qkv.shape[0], heads + 2 * groups)](
        qkv, rope, pos, rows, k_cache, v_cache, prefix, slots, heads, groups, d, num_warps=1
    )


def swiglu(gu: Tensor) -> Tensor:
    """gu [B, 2F] (gate first) → silu(gate) * up [B, F]."""
    rows, width = gu.shape
    out = torch.empty(rows, width // 2, dtype=gu.dtype, device=gu.device)
    row_ops.swiglu(gu, out)
    return out


def dequant_int4(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The checkpoint's int4 layout (quantize.py): int8 bytes [N, K/2], even column in the high
    nibble, and scale [N] → weights [N, K] in dtype, as quantize.dequantize_weight gives."""
    rows, half = weight.shape
    if half % 4:  # not whole int32 words (no chatglm2 weight): the torch reference
        return dequantize_weight(weight, scale, 4, dtype)
    out = torch.empty(rows, 2 * half, dtype=dtype, device=weight.device)
    row_ops.dequant_int4(weight.view(torch.int32), scale, out)
    return out


# --------------------------------------------------------------------------------------------
# Skinny matmul: y [M, N] = x [M, K] · W[N, K]ᵀ (+ bias) for the few rows of a decode step.
# It reads every weight once and is bound by that read; cuBLAS's kernels for such shapes
# reach a little less of the bandwidth. One program per BN output features, all M rows.


@triton.jit
def _skinny_kernel(
    x_ptr: tl.tensor,
    w_ptr: tl.tensor,
    b_ptr: tl.tensor,
    y_ptr: tl.tensor,
    M: tl.tensor,
    N: tl.tensor,
    K: tl.constexpr,
    M_PAD: tl.constexpr,  # M rounded up to a power of two >= 16 (tl.dot's minimum)
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 weights: full-precision products, not TF32
    BN: tl.constexpr,
    BK: tl.constexpr,
) -> None:
    cols = tl.program_id(0) * BN + tl.arange(0, BN)  # output features
    rows = tl.arange(0, M_PAD)
    n_ok = cols < N
    m_ok = rows < M
    acc = tl.zeros([M_PAD, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < K
        x = tl.load(
            x_ptr + rows[:, None] * K + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )  # [M_PAD, BK]
        w = tl.load(
            w_ptr + cols[:, None] * K + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0
        )  # [BN, BK]
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rows[:, None] * N + cols[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# Tuned once per (rows bucket, N, K) on first use, which is outside any graph capture (the
# decode step warms up eagerly first). The interpreter (tests) runs one fixed block shape.
_SKINNY_CONFIGS = [
    triton.Config({"BN": 16, "BK": 256}, num_warps=4, num_stages=4),
    triton.Config({"BN": 32, "BK": 128}, num_warps=4, num_stages=4),
    triton.Config({"BN": 16, "BK": 512}, num_warps=4, num_stages=3),
    triton.Config({"BN": 32, "BK": 256}, num_warps=4, num_stages=3),
    triton.Config({"BN": 64, "BK": 128}, num_warps=4, num_stages=3),
    triton.Config({"BN": 64, "BK": 256}, num_warps=8, num_stages=3),
]
_skinny_tuned = triton.autotune(configs=_SKINNY_CONFIGS, key=["M_PAD", "N", "K"])(_skinny_kernel)
INTERPRET = interpreted()

SKINNY_MAX_ROWS = 16  # measured on an H100: faster than cuBLAS at 1 and 16 rows, a tie at 64
# int4 rows that int4_linear takes: measured on an H100, faster than dequantizing the weight
# and cuBLAS at every decode bucket up to 64 rows; a prefill's many rows still do that.
INT4_MATMUL_MAX_ROWS = 64


def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [M, K] (M <= SKINNY_MAX_ROWS), weight [N, K], bias [N] or None, one float dtype →
    x · weightᵀ + bias [M, N], accumulated in fp32 and rounded once, as F.linear does."""
    rows, k = x.shape
    n = weight.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    m_pad = max(16, triton.next_power_of_2(rows))

    args = (x, weight, bias if bias is not None else weight, y, rows, n)
    flags = {"K": k, "M_PAD": m_pad, "HAS_BIAS": bias is not None}
    flags["IEEE"] = x.dtype == torch.float32
    if INTERPRET:
        _skinny_kernel[(triton.cdiv(n, 16),)](*args, **flags, BN=16, BK=32)
        return y

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(n, meta["BN"]),)

    _skinny_tuned[grid](*args, **flags)
    return y
