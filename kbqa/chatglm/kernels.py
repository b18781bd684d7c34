"""Triton kernels for ChatGLM2 on CUDA: weight-only GEMV (fp16/bf16, int8, int4) over one or
two rows with the RMSNorm before it and the bias / SwiGLU / residual add after it fused in,
RMSNorm and SwiGLU over many rows, int4 dequantization for prefill matmuls, and the int4
matmul for a few rows (int4_linear: a tiled kernel on the packed words); attention kernels
live in attn_kernels.py (re-exported here), the skinny float matmul in batched_kernels.py.

Imported only where the kernels run (triton_use.py): triton is not a dependency of
kbqa.chatglm. The launchers take contiguous tensors and check nothing; fused.py owns shapes
and the torch reference of every op.

int4 weights are read in the checkpoint layout (quantize.py): int8 bytes [N, K/2], even
column in the high nibble, viewed as int32 words [N, K/8]. Little-endian, so byte b of a word
is bits 8b..8b+7 and holds columns 2b (bits 8b+4..8b+7) and 2b+1 (bits 8b..8b+3). In the
GEMV, nibbles become floats by bit tricks, never an int→float conversion (16 per clock per SM
on Hopper, too slow for 5.7e9 weights per token): see _nibble. The dequant kernel (for
matmuls over many rows, where its cost is shared) reads bytes and writes each row's columns
in order, so that its stores coalesce.
"""
# Triton reads a parameter's annotation: `tl.constexpr` makes it a compile-time constant and
# `tl.tensor` (a name Triton can resolve inside a kernel) changes nothing. Never annotate with
# `int`: that turns off Triton's divisible-by-16 specialization of sizes and strides, which the
# 16-byte loads depend on.

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kbqa.chatglm.attn_kernels import attn_decode_rows, attn_prefill, rope_cache
from kbqa.chatglm.triton_use import interpreted

__all__ = ["attn_decode_rows", "attn_prefill", "rope_cache"]  # re-exported for fused.py

INTERPRET = interpreted()


# --------------------------------------------------------------------------------------------
# GEMV: y[n] = epilogue(sum_k W[n, k] * prologue(x)[k])


@triton.jit
def _nibble(words: tl.tensor, C: tl.constexpr) -> tl.tensor:
    """Column C of each int4 word as the fp32 1 + (v + 8) / 16, for the signed nibble v.

    Moving the nibble to mantissa bits 19..22 under the exponent of 1.0 takes one shift and
    one and-xor (LOP3); the offset 1.5 is taken out once per row after the sum, so the inner
    loop is shift, LOP3, FFMA per weight.
    """
    SHIFT: tl.constexpr = 19 - (8 * (C // 2) + 4 * (1 - C % 2))  # nibble at bit 8b or 8b + 4
    if SHIFT >= 0:  # noqa: SIM108 (a Triton compile-time branch)
        t = words << SHIFT
    else:
        t = words >> (-SHIFT)
    return ((t & 0x780000) ^ 0x3FC00000).to(tl.float32, bitcast=True)


@triton.jit
def _gemv_kernel(
    w_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    bias_ptr: tl.tensor,
    x_ptr: tl.tensor,
    norm_ptr: tl.tensor,
    y_ptr: tl.tensor,
    N: tl.tensor,  # output rows (with GLU: the weight has 2N rows, gate then up)
    eps: tl.tensor,
    K: tl.constexpr,
    BITS: tl.constexpr,  # 16: float weights; 8: int8 [N, K]; 4: int32 words [N, K/8]
    NORM: tl.constexpr,  # the input is RMSNorm(x) * norm
    GLU: tl.constexpr,  # y = silu(gate) * up of rows n and N + n
    HAS_BIAS: tl.constexpr,
    ACCUM: tl.constexpr,  # y += result (fp32 atomics), else y = result
    BN: tl.constexpr,
    BK: tl.constexpr,  # columns per step (for int4, BK/8 words)
    SPLIT: tl.constexpr,  # programs along K (ACCUM only): their sums meet in the atomics
) -> None:
    # Input row m of x [M, K] gives output row m of y [M, N]. The M programs of one block of
    # weights are launched together (axis 0), so all but the first read it from L2.
    m = tl.program_id(0)
    x_ptr += m * K
    y_ptr += m * N
    rows = tl.program_id(1) * BN + tl.arange(0, BN)
    row_ok = rows < N
    piece = tl.program_id(2)
    # Columns of this piece: [piece * KS, (piece + 1) * KS), KS a multiple of BK.
    KS: tl.constexpr = (K + SPLIT * BK - 1) // (SPLIT * BK) * BK
    if BITS == 4:
        BW: tl.constexpr = BK // 8
        WORDS: tl.constexpr = K // 8
        acc = tl.zeros([BN, BW], dtype=tl.float32)
        acc2 = tl.zeros([BN, BW], dtype=tl.float32)
        sq = tl.zeros([BW], dtype=tl.float32)
        sx = tl.zeros([BW], dtype=tl.float32)
        for k0 in range(piece * (KS // 8), tl.minimum((piece + 1) * (KS // 8), WORDS), BW):
            wi = k0 + tl.arange(0, BW)
            w_ok = wi < WORDS
            offs = rows[:, None] * WORDS + wi[None, :]
            ok = row_ok[:, None] & w_ok[None, :]
            words = tl.load(w_ptr + offs, mask=ok, other=0)  # [BN, BW] int32
            if GLU:
                words2 = tl.load(w_ptr + N * WORDS + offs, mask=ok, other=0)
            for c in tl.static_range(8):
                cols = wi * 8 + c  # [BW]
                xc = tl.load(x_ptr + cols, mask=w_ok, other=0.0).to(tl.float32)
                if NORM:
                    sq += xc * xc
                    xc = xc * tl.load(norm_ptr + cols, mask=w_ok, other=0.0).to(tl.float32)
                sx += xc
                acc += _nibble(words, c) * xc[None, :]
                if GLU:
                    acc2 += _nibble(words2, c) * xc[None, :]
        # sum (1 + (v + 8) / 16) x = sum v x / 16 + 1.5 sum x
        y = (tl.sum(acc, axis=1) - 1.5 * tl.sum(sx, axis=0)) * 16.0
        y2 = (tl.sum(acc2, axis=1) - 1.5 * tl.sum(sx, axis=0)) * 16.0
    else:
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        acc2 = tl.zeros([BN, BK], dtype=tl.float32)
        sq = tl.zeros([BK], dtype=tl.float32)
        for k0 in range(piece * KS, tl.minimum((piece + 1) * KS, K), BK):
            cols = k0 + tl.arange(0, BK)
            col_ok = cols < K
            xk = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if NORM:
                sq += xk * xk
                xk = xk * tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            offs = rows[:, None] * K + cols[None, :]
            ok = row_ok[:, None] & col_ok[None, :]
            w = tl.load(w_ptr + offs, mask=ok, other=0.0)  # [BN, BK]
            acc += w.to(tl.float32) * xk[None, :]
            if GLU:
                w2 = tl.load(w_ptr + N * K + offs, mask=ok, other=0.0)
                acc2 += w2.to(tl.float32) * xk[None, :]
        y = tl.sum(acc, axis=1)  # [BN]
        y2 = tl.sum(acc2, axis=1)
    if NORM:
        # RMSNorm(x) · w = rsqrt(mean(x²) + eps) · (W (x ⊙ norm)): the scalar comes out.
        rstd = tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
        y = y * rstd
        y2 = y2 * rstd
    if BITS != 16:
        y = y * tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if GLU:
            y2 = y2 * tl.load(scale_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        y += tl.where(piece == 0, bias, 0.0)  # one piece adds the bias
        if GLU:
            y2 += tl.load(bias_ptr + N + rows, mask=row_ok, other=0.0).to(tl.float32)
    if GLU:
        y = y * tl.sigmoid(y) * y2
    if ACCUM:
        tl.atomic_add(y_ptr + rows, y, mask=row_ok)
    else:
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def _gemv_configs(split: bool) -> list[triton.Config]:
    # (rows, columns per step, warps): 8–16 KB of weights per step keeps enough bytes in flight
    # per SM for HBM3. Many rows per thread amortise the per-column work (loading x, the norm)
    # over more weights, which int4 needs, but leave few programs for short outputs (4096
    # rows): splitting K restores them where the output is accumulated.
    shapes = [(4, 1024, 4), (8, 512, 4), (16, 256, 4), (8, 1024, 8), (16, 512, 8)]
    shapes += [(16, 1024, 4), (32, 512, 8), (32, 256, 4), (64, 256, 8)]
    configs = [(bn, bk, w, 1) for bn, bk, w in shapes]
    if split:
        configs += [(16, 512, 4, 2), (32, 256, 4, 2), (64, 256, 4, 4), (64, 256, 4, 8)]
        configs += [(32, 512, 4, 4), (128, 256, 8, 8)]
    return [
        triton.Config({"BN": bn, "BK": bk, "SPLIT": sp}, num_warps=w) for bn, bk, w, sp in configs
    ]


# Winners of the autotuner on an H100 (2026-11-25) for chatglm2-6b's decode GEMVs, by
# (bits, N, K): (BN, BK, warps, SPLIT, stages). Used instead of autotuning (KBQA_GEMV_AUTOTUNE=1
# tunes anyway), so that decode starts without a tuning pass of ~100 compiles, which also
# allocates a 256 MB buffer to flush the L2. Other shapes are tuned on first use.
TUNED: dict[tuple[int, int, int], tuple[int, int, int, int, int]] = {
    # fp16 (and bf16) weights: qkv, h→4h (GLU), dense, 4h→h, output layer; the first four
    # from the sweep (H100, 2026-12-07: one decode step's GEMVs 5,385 → 5,188 µs, `generate`
    # 218.5 → 224.8 tok/s)
    (16, 4608, 4096): (8, 512, 4, 1, 4),
    (16, 13696, 4096): (4, 2048, 4, 1, 4),
    (16, 4096, 4096): (32, 128, 8, 4, 3),
    (16, 4096, 13696): (8, 1024, 4, 4, 3),
    (16, 65024, 4096): (8, 512, 4, 1, 3),
    # int4: many rows per program for the short outputs, with K split over 8 programs; qkv,
    # dense and 4h→h from bench/chatglm_engine_gemv_gpu.py's sweep (H100, 2026-12-07: one
    # decode step's GEMVs 2,444 → 2,327 µs, the engine's 1-stream decode 412 → 421 tok/s)
    (4, 4608, 4096): (8, 1024, 4, 1, 2),
    (4, 13696, 4096): (16, 1024, 4, 1, 3),
    (4, 4096, 4096): (64, 512, 4, 8, 2),
    (4, 4096, 13696): (16, 2048, 4, 2, 2),
}

# The int4 GEMV where it stores its result rather than adding it into the residual stream
# (int4_linear's rows, a GEMV without its fusions): tuned the same way, for those launches.
TUNED_STORE: dict[tuple[int, int, int], tuple[int, int, int, int, int]] = {
    (4, 4096, 4096): (4, 1024, 4, 1, 3),
    (4, 27392, 4096): (16, 1024, 4, 1, 3),
    (4, 4096, 13696): (4, 1024, 4, 1, 3),
}

_KEY = ["N", "K", "BITS", "NORM", "GLU"]
_gemv_autotuned = triton.autotune(configs=_gemv_configs(False), key=_KEY)(_gemv_kernel)
# Accumulating launches add into y: the tuner puts y back after each trial.
_gemv_accum_autotuned = triton.autotune(
    configs=_gemv_configs(True), key=_KEY, restore_value=["y_ptr"]
)(_gemv_kernel)
AUTOTUNE = os.environ.get("KBQA_GEMV_AUTOTUNE") == "1"


def gemv(
    weight: Tensor,
    scale: Tensor | None,
    bias: Tensor | None,
    x: Tensor,
    norm: Tensor | None,
    eps: float,
    glu: bool,
    out: Tensor,
    accumulate: bool,
    bits: int,
    k: int,
) -> None:
    """out [N] (+)= epilogue(W · prologue(x)); weight [N, K] (float or int8) or int32 words
    [N, K/8], with 2N rows (gate, up) when glu; x [K]. Or x [M, K] → out [M, N], row by row
    (each row reads the weights again, from L2). accumulate: out is fp32 and gets the result
    added (the residual stream); only then may K be split over programs."""
    n = out.shape[-1]
    m = x.numel() // k
    flags = {"K": k, "BITS": bits, "NORM": norm is not None, "GLU": glu}
    flags |= {"HAS_BIAS": bias is not None, "ACCUM": accumulate}
    scale, bias, norm = (out if t is None else t for t in (scale, bias, norm))  # unread if None
    args = (weight, scale, bias, x, norm, out, n, eps)
    tuned = (None if accumulate else TUNED_STORE.get((bits, n, k))) or TUNED.get((bits, n, k))
    if tuned is not None and tuned[3] > 1 and not accumulate:
        tuned = None  # tuned for the accumulating launch; split K needs that
    if INTERPRET or (tuned is not None and not AUTOTUNE):
        bn, bk, warps, split, stages = tuned or (16, 64, 4, 2 if accumulate else 1, 3)
        grid = (m, triton.cdiv(n, bn), split)
        _gemv_kernel[grid](
            *args, **flags, BN=bn, BK=bk, SPLIT=split, num_warps=warps, num_stages=stages
        )
    else:
        tuner = _gemv_accum_autotuned if accumulate else _gemv_autotuned
        tuner[lambda meta: (m, triton.cdiv(n, meta["BN"]), meta["SPLIT"])](*args, **flags)


# --------------------------------------------------------------------------------------------
# Row-wise RMSNorm and SwiGLU (for more rows than the GEMV takes), int4 dequant for prefill.


@triton.jit
def _rmsnorm_kernel(
    x_ptr: tl.tensor,
    w_ptr: tl.tensor,
    h_ptr: tl.tensor,
    eps: tl.tensor,
    H: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < H
    x = tl.load(x_ptr + row * H + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(h_ptr + row * H + cols, (x * rstd * w).to(h_ptr.dtype.element_ty), mask=ok)


def rmsnorm(x: Tensor, weight: Tensor, eps: float, h: Tensor) -> None:
    """x, h [S, H] contiguous (any float dtypes): h = RMSNorm(x) * weight, computed in fp32."""
    rows, hidden = x.shape
    _rmsnorm_kernel[(rows,)](
        x, weight, h, eps, H=hidden, BLOCK=triton.next_power_of_2(hidden), num_warps=8
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
    # The scale rounded to the output dtype first, as the model's product in that dtype does
    # (a no-op for fp16 scales into fp16/fp32; it matters for bf16). q * scale is then exact
    # in fp32, so rounding it once equals the model's product.
    scale = tl.load(scale_ptr + rows, mask=rows < N, other=0.0)
    scale = scale.to(out_ptr.dtype.element_ty).to(tl.float32)[:, None]
    even = (high.to(tl.float32) * scale).to(out_ptr.dtype.element_ty)
    odd = (low.to(tl.float32) * scale).to(out_ptr.dtype.element_ty)
    pairs = tl.reshape(tl.join(even, odd), (BR, 2 * BC))  # even column first
    out_cols = tl.program_id(1) * 2 * BC + tl.arange(0, 2 * BC)
    out_ok = (rows < N)[:, None] & (out_cols < 2 * HALF)[None, :]
    tl.store(out_ptr + rows[:, None] * (2 * HALF) + out_cols[None, :], pairs, mask=out_ok)


def dequant_int4(words: Tensor, scale: Tensor, out: Tensor) -> None:
    """words int32 [N, K/8] (the checkpoint's int8 bytes [N, K/2], reinterpreted), scale [N]
    → out [N, K] (the model dtype), as quantize.dequantize_weight gives, bit for bit."""
    packed = words.view(torch.int8)  # [N, K/2]
    rows, half = packed.shape
    br, bc = 16, 256
    grid = (triton.cdiv(rows, br), triton.cdiv(half, bc))
    _dequant_int4_kernel[grid](packed, scale, out, rows, half, br, bc)


# --------------------------------------------------------------------------------------------
# int4 matmul: y [M, N] = x [M, K] · W[N, K]ᵀ (+ bias) read from the packed words, for a
# decode step's few rows. Up to INT4_GEMV_MAX_ROWS rows go to the GEMV above; more to a tiled
# kernel that turns each tile of words into floats in registers and multiplies on the tensor
# cores, so the weights are read once for all M rows and never written out as floats.


@triton.jit
def _int4_as(words: tl.tensor, C: tl.constexpr, dtype: tl.constexpr) -> tl.tensor:
    """Column C of each int4 word as the signed value v in dtype, exactly: v + 8 (the nibble
    with its sign bit flipped) under the exponent of 2^10 (fp16) or 2^23 (fp32), minus that
    power + 8. A shift, one LOP3 and a subtraction, no int→float conversion (bf16 converts
    from fp16 after: one more instruction, for a dtype the int4 checkpoints do not use)."""
    nib = (words >> (8 * (C // 2) + 4 * (1 - C % 2))) & 0xF  # [BN, BW] int32
    if dtype == tl.float32:
        w = (nib ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
    else:
        w = (nib ^ 0x6408).to(tl.int16).to(tl.float16, bitcast=True) - 1032.0
    return w.to(dtype)


@triton.jit
def _int4_matmul_kernel(
    x_ptr: tl.tensor,
    w_ptr: tl.tensor,
    scale_ptr: tl.tensor,
    bias_ptr: tl.tensor,
    y_ptr: tl.tensor,
    M: tl.tensor,
    N: tl.tensor,
    K: tl.constexpr,
    M_PAD: tl.constexpr,  # M rounded up to a power of two >= 16 (the autotuner's key)
    HAS_BIAS: tl.constexpr,
    ACCUM: tl.constexpr,  # y (fp32, the residual stream) += the product, else y = it
    BM: tl.constexpr,
    BN: tl.constexpr,
    BW: tl.constexpr,  # words per step (BW * 8 columns)
) -> None:
    cols = tl.program_id(0) * BN + tl.arange(0, BN)  # output features
    rows = tl.program_id(1) * BM + tl.arange(0, BM)
    n_ok = cols < N
    m_ok = rows < M
    WORDS: tl.constexpr = K // 8
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, WORDS, BW):
        wi = k0 + tl.arange(0, BW)
        w_ok = wi < WORDS
        words = tl.load(
            w_ptr + cols[:, None] * WORDS + wi[None, :], mask=n_ok[:, None] & w_ok[None, :], other=0
        )  # [BN, BW]
        # Column c of every word as [BN, BW] floats, put back in column order w * 8 + c:
        # tl.join stacks on a new last axis, so the last join picks c's lowest bit (even or
        # odd), the inner ones its higher bits, and [BN, BW, 2, 2, 2] reads row-major in order.
        c0, c1 = _int4_as(words, 0, dtype), _int4_as(words, 1, dtype)
        c2, c3 = _int4_as(words, 2, dtype), _int4_as(words, 3, dtype)
        c4, c5 = _int4_as(words, 4, dtype), _int4_as(words, 5, dtype)
        c6, c7 = _int4_as(words, 6, dtype), _int4_as(words, 7, dtype)
        even = tl.join(tl.join(c0, c4), tl.join(c2, c6))  # [BN, BW, 2, 2]
        odd = tl.join(tl.join(c1, c5), tl.join(c3, c7))
        w = tl.reshape(tl.join(even, odd), (BN, 8 * BW))  # [BN, BK]
        ks = k0 * 8 + tl.arange(0, 8 * BW)
        x = tl.load(
            x_ptr + rows[:, None] * K + ks[None, :],
            mask=m_ok[:, None] & (ks < K)[None, :],
            other=0.0,
        )  # [BM, BK]
        if dtype == tl.float32:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    y = acc * tl.load(scale_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rows[:, None] * N + cols[None, :]
    if ACCUM:  # each output is this program's alone: a plain read-modify-write
        y += tl.load(out, mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# Tuned per (rows bucket, N, K) on first use, which is outside any graph capture (the decode
# step warms up eagerly first): few output features per program for few rows, so that a
# 4096-row weight still spreads over the SMs.
_INT4_CONFIGS = [
    triton.Config({"BM": bm, "BN": bn, "BW": bw}, num_warps=w, num_stages=st)
    for bm, bn, bw, w, st in [
        (16, 16, 32, 4, 4), (16, 16, 64, 4, 4), (16, 32, 32, 4, 4), (16, 32, 64, 4, 3),
        (16, 64, 32, 4, 3), (32, 32, 32, 4, 4), (32, 64, 32, 4, 3), (64, 64, 32, 4, 3),
    ]
]  # fmt: skip
_INT4_KEY = ["M_PAD", "N", "K", "ACCUM"]
_int4_matmul_tuned = triton.autotune(configs=_INT4_CONFIGS, key=_INT4_KEY)(_int4_matmul_kernel)
_int4_matmul_accum_tuned = triton.autotune(
    configs=_INT4_CONFIGS, key=_INT4_KEY, restore_value=["y_ptr"]
)(_int4_matmul_kernel)
INT4_GEMV_MAX_ROWS = 2  # rows that take the GEMV; more take the tiled kernel
# Rows that int4_linear takes at all: measured on an H100, faster than dequantizing the weight
# and cuBLAS at every decode bucket up to 64 rows; a prefill's many rows still do that.
INT4_MATMUL_MAX_ROWS = 64
# Winners of the autotuner on an H100 (2026-12-07) for chatglm2-6b's decode, by (M_PAD, N, K):
# (BM, BN, BW, warps, stages); other shapes are tuned on first use (KBQA_GEMV_AUTOTUNE=1: all).
INT4_TUNED: dict[tuple[int, int, int], tuple[int, int, int, int, int]] = {
    # 3–16 rows: qkv, dense, h→4h (gate and up, no GLU fused), 4h→h; qkv, h→4h and 4h→h
    # from the sweep (H100, 2026-12-07: h→4h 78.7 → 57.1 µs, the engine's 16 streams 2,769 →
    # 3,156 tok/s)
    (16, 4608, 4096): (16, 64, 16, 4, 5),
    (16, 4096, 4096): (16, 32, 32, 4, 4),
    (16, 27392, 4096): (16, 128, 16, 4, 3),
    (16, 4096, 13696): (16, 32, 64, 4, 5),
    (32, 4608, 4096): (64, 64, 32, 4, 3),
    (32, 4096, 4096): (32, 32, 32, 4, 4),
    (32, 27392, 4096): (64, 64, 32, 4, 3),
    (32, 4096, 13696): (32, 32, 32, 4, 4),
    (64, 4608, 4096): (64, 64, 32, 4, 3),
    (64, 4096, 4096): (64, 64, 32, 4, 3),
    (64, 27392, 4096): (64, 64, 32, 4, 3),
    (64, 4096, 13696): (64, 64, 32, 4, 3),
}


def int4_linear(
    x: Tensor, words: Tensor, scale: Tensor, bias: Tensor | None, add_to: Tensor | None = None
) -> Tensor:
    """x [M, K] · Wᵀ (+ bias) → [M, N] in x's dtype, W the int32 words [N, K/8] of int4
    weights with scale [N]; accumulated in fp32, the scale applied to the sums. With add_to
    (fp32 [M, N]) the product is added into it, which is returned."""
    rows, k = x.shape
    n = words.shape[0]
    out = add_to if add_to is not None else torch.empty(rows, n, dtype=x.dtype, device=x.device)
    if rows <= INT4_GEMV_MAX_ROWS:
        gemv(words, scale, bias, x, None, 0.0, False, out, add_to is not None, 4, k)
        return out
    m_pad = max(16, triton.next_power_of_2(rows))
    args = (x, words, scale, bias if bias is not None else scale, out, rows, n)
    flags = {"K": k, "M_PAD": m_pad, "HAS_BIAS": bias is not None, "ACCUM": add_to is not None}
    # The interpreter (tests) runs one small block shape.
    tuned = (16, 16, 16, 4, 1) if INTERPRET else INT4_TUNED.get((m_pad, n, k))
    if tuned is not None and (INTERPRET or not AUTOTUNE):
        bm, bn, bw, warps, stages = tuned
        grid = (triton.cdiv(n, bn), triton.cdiv(rows, bm))
        _int4_matmul_kernel[grid](
            *args, **flags, BM=bm, BN=bn, BW=bw, num_warps=warps, num_stages=stages
        )
        return out

    def grid_of(meta: dict[str, int]) -> tuple[int, int]:
        return (triton.cdiv(n, meta["BN"]), triton.cdiv(rows, meta["BM"]))

    (_int4_matmul_accum_tuned if add_to is not None else _int4_matmul_tuned)[grid_of](
        *args, **flags
    )
    return out
