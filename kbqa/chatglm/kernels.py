"""Triton kernels for ChatGLM2 on CUDA: weight-only GEMV (fp16/bf16, int8, int4) with the
norm / SwiGLU / bias / residual around it fused in, rotary + KV-cache write, split-K decode
attention, RMSNorm and SwiGLU for prefill, and int4 dequantization for prefill matmuls.

Imported only by fused.py, and only on CUDA (or under TRITON_INTERPRET=1 in tests): triton is
not a dependency of kbqa.chatglm. The launchers here take contiguous tensors and check
nothing; fused.py owns shapes and the torch reference of every op.

int4 weights are read in the checkpoint layout (quantize.py): int8 bytes [N, K/2], even
column in the high nibble, viewed as int32 words [N, K/8]. Little-endian, so byte b of a word
is bits 8b..8b+7 and holds columns 2b (bits 8b+4..8b+7) and 2b+1 (bits 8b..8b+3). A nibble
becomes a float without an int→float conversion (16 per clock per SM on Hopper, too slow for
5.7e9 of them per token): (u ^ 8) | 0x4B000000 is the fp32 2^23 + (u ^ 8), and u ^ 8 is the
signed nibble + 8, so subtracting 2^23 + 8 leaves the signed value exactly.
"""
# Triton reads a parameter's annotation: `tl.constexpr` makes it a compile-time constant and
# `tl.tensor` (a name Triton can resolve inside a kernel) changes nothing. Never annotate with
# `int`: that turns off Triton's divisible-by-16 specialization of sizes and strides, which the
# 16-byte loads depend on.

from __future__ import annotations

import os

import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------------
# GEMV: y[n] = epilogue(sum_k W[n, k] * prologue(x)[k])


@triton.jit
def _gemv_kernel(
    w_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    bias_ptr: tl.tensor,
    x_ptr: tl.tensor,
    norm_ptr: tl.tensor,
    res_ptr: tl.tensor,
    y_ptr: tl.tensor,
    N: tl.tensor,
    eps: tl.tensor,
    K: tl.constexpr,
    BITS: tl.constexpr,  # 16: float weights; 8: int8 [N, K]; 4: int32 words [N, K/8]
    PROLOGUE: tl.constexpr,  # 0: x; 1: RMSNorm(x) * norm; 2: silu(x[:K]) * x[K:]
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,  # columns per step (for int4, BK/8 words)
) -> None:
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    if BITS == 4:
        BW: tl.constexpr = BK // 8
        WORDS: tl.constexpr = K // 8
        acc = tl.zeros([BN, BW], dtype=tl.float32)
        sq = tl.zeros([BW], dtype=tl.float32)
        for k0 in range(0, WORDS, BW):
            wi = k0 + tl.arange(0, BW)
            w_ok = wi < WORDS
            words = tl.load(
                w_ptr + rows[:, None] * WORDS + wi[None, :],
                mask=row_ok[:, None] & w_ok[None, :],
                other=0,
            )  # [BN, BW] int32
            for c in tl.static_range(8):
                cols = wi * 8 + c  # [BW]
                if PROLOGUE == 2:
                    gate = tl.load(x_ptr + cols, mask=w_ok, other=0.0).to(tl.float32)
                    up = tl.load(x_ptr + K + cols, mask=w_ok, other=0.0).to(tl.float32)
                    xc = gate * tl.sigmoid(gate) * up
                else:
                    xc = tl.load(x_ptr + cols, mask=w_ok, other=0.0).to(tl.float32)
                if PROLOGUE == 1:
                    sq += xc * xc
                    xc = xc * tl.load(norm_ptr + cols, mask=w_ok, other=0.0).to(tl.float32)
                shift = 8 * (c // 2) + 4 * (1 - c % 2)
                nib = ((words >> shift) & 0xF) ^ 0x4B000008
                acc += (nib.to(tl.float32, bitcast=True) - 8388616.0) * xc[None, :]
    else:
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        sq = tl.zeros([BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            col_ok = cols < K
            if PROLOGUE == 2:
                gate = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                up = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
                xk = gate * tl.sigmoid(gate) * up
            else:
                xk = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if PROLOGUE == 1:
                sq += xk * xk
                xk = xk * tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(
                w_ptr + rows[:, None] * K + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :],
                other=0.0,
            )  # [BN, BK]
            acc += w.to(tl.float32) * xk[None, :]
    y = tl.sum(acc, axis=1)  # [BN]
    if PROLOGUE == 1:
        # RMSNorm(x) · w = rsqrt(mean(x²) + eps) · (W (x ⊙ norm)): the scalar comes out.
        y = y * tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
    if BITS != 16:
        y = y * tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_RES:
        y += tl.load(res_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def _gemv_configs() -> list[triton.Config]:
    # (rows, columns per step, warps): 8–16 KB of weights per step keeps enough bytes in flight
    # per SM for HBM3; fewer rows and longer steps suit int4, whose rows are 4x shorter.
    shapes = [(4, 1024, 4), (8, 512, 4), (16, 256, 4), (8, 1024, 8), (16, 512, 8)]
    shapes += [(16, 1024, 4), (32, 512, 8)]
    return [triton.Config({"BN": bn, "BK": bk}, num_warps=w) for bn, bk, w in shapes]


# Winners on an H100 by (bits, N, K): (BN, BK, warps). Used instead of autotuning when
# present, so that decode starts without a tuning pass (which also allocates a 256 MB buffer
# to flush the L2).
TUNED: dict[tuple[int, int, int], tuple[int, int, int]] = {}

_gemv_autotuned = triton.autotune(configs=_gemv_configs(), key=["N", "K", "BITS", "PROLOGUE"])(
    _gemv_kernel
)
AUTOTUNE = os.environ.get("KBQA_GEMV_AUTOTUNE") == "1"


def gemv(
    weight: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
    x: Tensor,
    norm: Tensor | None,
    eps: float,
    swiglu: bool,
    residual: Tensor | None,
    out: Tensor,
    bits: int,
    k: int,
) -> None:
    """out [N] = W x with the optional prologue/epilogue; weight [N, K] (float or int8) or int32
    words [N, K/8]; x [K] ([2K] with swiglu)."""
    n = out.shape[0]
    prologue = 2 if swiglu else (1 if norm is not None else 0)
    dummy = out
    args = (
        weight,
        scale if scale is not None else dummy,
        bias if bias is not None else dummy,
        x,
        norm if norm is not None else dummy,
        residual if residual is not None else dummy,
        out,
        n,
        eps,
    )
    flags = {"K": k, "BITS": bits, "PROLOGUE": prologue}
    flags |= {"HAS_BIAS": bias is not None, "HAS_RES": residual is not None}
    tuned = TUNED.get((bits, n, k))
    if INTERPRET or (tuned is not None and not AUTOTUNE):
        bn, bk, warps = tuned or (16, 64, 4)
        _gemv_kernel[(triton.cdiv(n, bn),)](*args, **flags, BN=bn, BK=bk, num_warps=warps)
    else:
        _gemv_autotuned[lambda meta: (triton.cdiv(n, meta["BN"]),)](*args, **flags)


def gemv_best_configs() -> dict[str, str]:
    """What the autotuner picked, by key (for the benchmark's record)."""
    return {str(key): str(config) for key, config in _gemv_autotuned.cache.items()}


# --------------------------------------------------------------------------------------------
# Rotary + KV-cache write: one program per (token, head of q | k | v).


@triton.jit
def _rope_cache_kernel(
    qkv_ptr: tl.tensor,
    rope_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    prefix: tl.tensor,
    stride_tok: tl.tensor,
    stride_g: tl.tensor,
    stride_t: tl.tensor,
    NH: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
) -> None:
    token = tl.program_id(0)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + token)
    slot = pos + prefix
    src = qkv_ptr + token * stride_tok + head * D
    PAIRS: tl.constexpr = D // 4
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, PAIRS)
    if head < NH + G:
        # Rotate pairs (x[2i], x[2i+1]) of the first half in fp32; rope [T, D/4, 2] = cos, sin.
        even = tl.load(src + 2 * i).to(tl.float32)
        odd = tl.load(src + 2 * i + 1).to(tl.float32)
        cos = tl.load(rope_ptr + pos * HALF + 2 * i)
        sin = tl.load(rope_ptr + pos * HALF + 2 * i + 1)
        new_even = even * cos - odd * sin
        new_odd = odd * cos + even * sin
        if head < NH:  # query: in place
            tl.store(src + 2 * i, new_even.to(qkv_ptr.dtype.element_ty))
            tl.store(src + 2 * i + 1, new_odd.to(qkv_ptr.dtype.element_ty))
        else:  # key: into the cache, with the unrotated half
            dst = k_ptr + (head - NH) * stride_g + slot * stride_t
            tl.store(dst + 2 * i, new_even.to(k_ptr.dtype.element_ty))
            tl.store(dst + 2 * i + 1, new_odd.to(k_ptr.dtype.element_ty))
            j = tl.arange(0, HALF)
            tl.store(dst + HALF + j, tl.load(src + HALF + j))
    else:
        d = tl.arange(0, D)
        dst = v_ptr + (head - NH - G) * stride_g + slot * stride_t
        tl.store(dst + d, tl.load(src + d))


def rope_cache(
    qkv: Tensor, rope: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, prefix: int
) -> None:
    """qkv [S, (N + 2G) * D] (rows may be strided), rope [T, D/4, 2] fp32, pos [S] int64;
    k_cache, v_cache [G, slots, D] (one batch row)."""
    groups, _, head_dim = k_cache.shape
    heads = qkv.shape[1] // head_dim - 2 * groups
    grid = (qkv.shape[0], heads + 2 * groups)
    _rope_cache_kernel[grid](
        qkv, rope, pos, k_cache, v_cache, prefix, qkv.stride(0), k_cache.stride(0),
        k_cache.stride(1), NH=heads, G=groups, D=head_dim, num_warps=1,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Decode attention (one query token): split the cache into pieces, one program per
# (KV group, piece) with online softmax over BT-key blocks, then combine the pieces per head.


@triton.jit
def _attn_partial_kernel(
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    o_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    prefix: tl.tensor,
    stride_g: tl.tensor,
    stride_t: tl.tensor,
    scale: tl.tensor,
    HPG: tl.constexpr,  # query heads per KV group
    QB: tl.constexpr,  # HPG padded to a power of two >= 16 (tl.dot's minimum)
    D: tl.constexpr,
    BT: tl.constexpr,
    SPLIT: tl.constexpr,  # keys per piece, a multiple of BT
    NSPLIT: tl.constexpr,
) -> None:
    group = tl.program_id(0)
    piece = tl.program_id(1)
    last = tl.load(pos_ptr) + prefix  # last visible slot (the prefix sits before position 0)
    start = piece * SPLIT
    if start <= last:
        r = tl.arange(0, QB)
        r_ok = r < HPG
        d = tl.arange(0, D)
        q_offs = (group * HPG + r)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + q_offs, mask=r_ok[:, None], other=0.0)  # [QB, D]
        m = tl.full([QB], float("-inf"), dtype=tl.float32)
        l = tl.zeros([QB], dtype=tl.float32)  # noqa: E741
        acc = tl.zeros([QB, D], dtype=tl.float32)
        base = group * stride_g
        end = tl.minimum(start + SPLIT, last + 1)
        for t0 in range(start, end, BT):
            t = t0 + tl.arange(0, BT)
            t_ok = t < end
            offs = base + t[:, None] * stride_t + d[None, :]
            k = tl.load(k_ptr + offs, mask=t_ok[:, None], other=0.0)  # [BT, D]
            s = tl.dot(q, tl.trans(k)) * scale  # [QB, BT]
            s = tl.where(t_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)  # noqa: E741
            v = tl.load(v_ptr + offs, mask=t_ok[:, None], other=0.0)  # [BT, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        row = (group * NSPLIT + piece) * QB + r  # [QB]
        tl.store(o_ptr + row[:, None] * D + d[None, :], acc, mask=r_ok[:, None])
        tl.store(ml_ptr + row * 2, m, mask=r_ok)
        tl.store(ml_ptr + row * 2 + 1, l, mask=r_ok)


@triton.jit
def _attn_combine_kernel(
    o_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    out_ptr: tl.tensor,
    prefix: tl.tensor,
    HPG: tl.constexpr,
    QB: tl.constexpr,
    D: tl.constexpr,
    SPLIT: tl.constexpr,
    NSPLIT: tl.constexpr,
    NS2: tl.constexpr,  # NSPLIT rounded up to a power of two
) -> None:
    head = tl.program_id(0)
    group = head // HPG
    last = tl.load(pos_ptr) + prefix
    s = tl.arange(0, NS2)
    s_ok = s < (last // SPLIT + 1)  # pieces the partial kernel wrote
    row = (group * NSPLIT + s) * QB + head % HPG  # [NS2]
    m = tl.load(ml_ptr + row * 2, mask=s_ok, other=float("-inf"))
    l = tl.load(ml_ptr + row * 2 + 1, mask=s_ok, other=0.0)  # noqa: E741
    weight = tl.exp(m - tl.max(m, axis=0))  # [NS2]; 0 for unwritten pieces
    d = tl.arange(0, D)
    o = tl.load(o_ptr + row[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
    y = tl.sum(weight[:, None] * o, axis=0) / tl.sum(weight * l, axis=0)  # [D]
    tl.store(out_ptr + head * D + d, y.to(out_ptr.dtype.element_ty))


def attn_decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    pos: Tensor,
    prefix: int,
    out: Tensor,
    partial: Tensor,
    ml: Tensor,
    split: int,
) -> None:
    """q [N * D] (rotated), caches [G, slots, D], pos [1]; out [N * D]. partial
    [G, NSPLIT, QB, D] fp32 and ml [G, NSPLIT, QB, 2] fp32 are scratch."""
    groups, _, head_dim = k_cache.shape
    heads = q.numel() // head_dim
    hpg = heads // groups
    nsplit, qb = partial.shape[1], partial.shape[2]
    block = min(64, split)
    _attn_partial_kernel[(groups, nsplit)](
        q, k_cache, v_cache, pos, partial, ml, prefix, k_cache.stride(0), k_cache.stride(1),
        head_dim**-0.5, HPG=hpg, QB=qb, D=head_dim, BT=block, SPLIT=split, NSPLIT=nsplit,
        num_warps=4,
    )  # fmt: skip
    _attn_combine_kernel[(heads,)](
        partial, ml, pos, out, prefix, HPG=hpg, QB=qb, D=head_dim, SPLIT=split, NSPLIT=nsplit,
        NS2=triton.next_power_of_2(nsplit), num_warps=4,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prefill helpers: row-wise RMSNorm (optionally after a residual add), SwiGLU, int4 dequant.


@triton.jit
def _rmsnorm_kernel(
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
    x = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:
        # The residual stream stays in the model dtype, as in the eager model.
        x += tl.load(res_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
        x = x.to(x_out_ptr.dtype.element_ty)
        tl.store(x_out_ptr + row * H + cols, x, mask=ok)
        x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(h_ptr + row * H + cols, (x * rstd * w).to(h_ptr.dtype.element_ty), mask=ok)


def rmsnorm(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float, x_out: Tensor, h: Tensor
) -> None:
    """x, residual, x_out, h [S, H] contiguous: x_out = x + residual; h = RMSNorm(x_out)."""
    rows, hidden = x.shape
    _rmsnorm_kernel[(rows,)](
        x, residual if residual is not None else x, weight, x_out, h, eps, H=hidden,
        BLOCK=triton.next_power_of_2(hidden), HAS_RES=residual is not None, num_warps=8,
    )  # fmt: skip


@triton.jit
def _swiglu_kernel(
    gu_ptr: tl.tensor, out_ptr: tl.tensor, F: tl.constexpr, BLOCK: tl.constexpr
) -> None:
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < F
    gate = tl.load(gu_ptr + row * 2 * F + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * 2 * F + F + cols, mask=ok, other=0.0).to(tl.float32)
    # Rounded to the model dtype before the product, as F.silu(gate) * up does.
    act = (gate * tl.sigmoid(gate)).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * F + cols, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


def swiglu(gu: Tensor, out: Tensor) -> None:
    """gu [S, 2F] (gate first) → out [S, F]."""
    rows, ffn = out.shape
    block = 1024
    _swiglu_kernel[(rows, triton.cdiv(ffn, block))](gu, out, F=ffn, BLOCK=block, num_warps=4)


@triton.jit
def _dequant_int4_kernel(
    w_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    out_ptr: tl.tensor,
    N: tl.tensor,
    K: tl.constexpr,
    BN: tl.constexpr,
    BW: tl.constexpr,
) -> None:
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    wi = tl.program_id(1) * BW + tl.arange(0, BW)
    WORDS: tl.constexpr = K // 8
    ok = (rows < N)[:, None] & (wi < WORDS)[None, :]
    words = tl.load(w_ptr + rows[:, None] * WORDS + wi[None, :], mask=ok, other=0)
    scale = tl.load(scale_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    for c in tl.static_range(8):
        shift = 8 * (c // 2) + 4 * (1 - c % 2)
        nib = ((words >> shift) & 0xF) ^ 0x4B000008
        value = (nib.to(tl.float32, bitcast=True) - 8388616.0) * scale[:, None]
        offs = rows[:, None] * K + wi[None, :] * 8 + c
        tl.store(out_ptr + offs, value.to(out_ptr.dtype.element_ty), mask=ok)


def dequant_int4(words: Tensor, scale: Tensor, out: Tensor) -> None:
    """words int32 [N, K/8], scale [N] → out [N, K] (the model dtype)."""
    rows, k = out.shape
    grid = (triton.cdiv(rows, 16), triton.cdiv(k // 8, 64))
    _dequant_int4_kernel[grid](words, scale, out, rows, K=k, BN=16, BW=64, num_warps=4)
