"""Triton kernels for the batched decode step (batched.py): the row-wise work between the
matmuls, which in plain PyTorch is ~45 small launches per layer and, at one token per row,
costs more than the attention.

- add_rmsnorm: x + residual (rounded to x's dtype, as the model's fp16 add is) and its
  RMSNorm, in fp32 as the model's RMSNorm computes it: one program per row.
- rope_cache: rotate q (in place) and k of every row by that row's position, and write k and
  v into the KV cache at (that row's cache row, its slot): one program per (row, head).
- swiglu: silu(gate) * up with the model's two roundings.

Imported only on CUDA (or with TRITON_INTERPRET=1 in tests): triton is not a dependency of
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


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr: tl.tensor,
    res_ptr: tl.tensor,
    w_ptr: tl.tensor,
    x_out_ptr: tl.tensor,
    h_ptr: tl.tensor,
    eps: tl.tensor,
    H: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RES: tl.constexpr,
) -> None:
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < H
    x = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * H + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_out_ptr + row * H + cols, x, mask=ok)
    xf = x.to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(h_ptr + row * H + cols, (w * (xf * inv)).to(h_ptr.dtype.element_ty), mask=ok)


def add_rmsnorm(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """x, residual [B, H] → (x + residual, RMSNorm(x + residual) * weight), x's dtype."""
    rows, hidden = x.shape
    x_out = torch.empty_like(x) if residual is not None else x
    h = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _add_rmsnorm_kernel[(rows,)](
        x, residual if residual is not None else x, weight, x_out, h, eps, hidden, block,
        residual is not None, num_warps=8 if block >= 2048 else 4,
    )  # fmt: skip
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


@triton.jit
def _swiglu_kernel(
    gu_ptr: tl.tensor, out_ptr: tl.tensor, F: tl.constexpr, BLOCK: tl.constexpr
) -> None:
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < F
    gate = tl.load(gu_ptr + row * 2 * F + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * 2 * F + F + cols, mask=ok, other=0.0).to(tl.float32)
    # F.silu(gate) rounds to the dtype before the product, as the model's MLP does.
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * F + cols, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


def swiglu(gu: Tensor) -> Tensor:
    """gu [B, 2F] (gate first) → silu(gate) * up [B, F]."""
    rows, width = gu.shape
    out = torch.empty(rows, width // 2, dtype=gu.dtype, device=gu.device)
    block = 1024
    _swiglu_kernel[(rows, triton.cdiv(width // 2, block))](gu, out, width // 2, block)
    return out


@triton.jit
def _dequant_int4_kernel(
    w_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    out_ptr: tl.tensor,
    N: tl.tensor,
    HALF: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
) -> None:
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)  # byte columns
    ok = (rows < N)[:, None] & (cols < HALF)[None, :]
    packed = tl.load(w_ptr + rows[:, None] * HALF + cols[None, :], mask=ok, other=0)  # [BR, BC]
    # Shifts promote to int32 (sign-extended): >> 4 is the signed high nibble; the low nibble
    # is moved to the top of a byte and shifted back down to extend its sign.
    high = packed >> 4
    low = (packed << 4).to(tl.int8) >> 4
    scale = tl.load(scale_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[:, None]
    # q * scale is exact in fp32, so rounding it once equals the model's fp16 product.
    even = (high.to(tl.float32) * scale).to(out_ptr.dtype.element_ty)
    odd = (low.to(tl.float32) * scale).to(out_ptr.dtype.element_ty)
    pairs = tl.reshape(tl.join(even, odd), (BR, 2 * BC))  # even column first
    out_cols = tl.program_id(1) * 2 * BC + tl.arange(0, 2 * BC)
    out_ok = (rows < N)[:, None] & (out_cols < 2 * HALF)[None, :]
    tl.store(out_ptr + rows[:, None] * (2 * HALF) + out_cols[None, :], pairs, mask=out_ok)


def dequant_int4(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The checkpoint's int4 layout (quantize.py): int8 bytes [N, K/2], even column in the high
    nibble, and scale [N] → weights [N, K] in dtype, as quantize.dequantize_weight gives."""
    rows, half = weight.shape
    out = torch.empty(rows, 2 * half, dtype=dtype, device=weight.device)
    br, bc = 16, 256
    _dequant_int4_kernel[(triton.cdiv(rows, br), triton.cdiv(half, bc))](
        weight, scale, out, rows, half, br, bc
    )
    return out
