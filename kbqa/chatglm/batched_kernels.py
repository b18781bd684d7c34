"""Triton skinny matmul for float weights: y = x · Wᵀ (+ bias) for the few rows of a decode
step, reading every weight once (cuBLAS's kernels for such shapes reach a little less of the
memory bandwidth). Imported only where the kernels run (triton_use.py).
"""
# Annotations: see kernels.py (`tl.tensor` for runtime arguments, never `int`).

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kbqa.chatglm.triton_use import interpreted

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
    ACCUM: tl.constexpr,  # y (fp32, the residual stream) += the product, else y = it
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
    if ACCUM:  # each output is this program's alone: a plain read-modify-write
        acc += tl.load(out, mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
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
_KEY = ["M_PAD", "N", "K", "ACCUM"]
_skinny_tuned = triton.autotune(configs=_SKINNY_CONFIGS, key=_KEY)(_skinny_kernel)
# Accumulating launches add into y: the tuner puts y back after each trial.
_skinny_accum_tuned = triton.autotune(configs=_SKINNY_CONFIGS, key=_KEY, restore_value=["y_ptr"])(
    _skinny_kernel
)
INTERPRET = interpreted()

SKINNY_MAX_ROWS = 16  # measured on an H100: faster than cuBLAS at 1 and 16 rows, a tie at 64


def skinny_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, add_to: Tensor | None = None
) -> Tensor:
    """x [M, K] (M <= SKINNY_MAX_ROWS), weight [N, K], bias [N] or None, one float dtype →
    x · weightᵀ + bias [M, N], accumulated in fp32 and rounded once, as F.linear does; or
    added into add_to (fp32 [M, N]), which is returned."""
    rows, k = x.shape
    n = weight.shape[0]
    y = add_to if add_to is not None else torch.empty(rows, n, dtype=x.dtype, device=x.device)
    m_pad = max(16, triton.next_power_of_2(rows))

    args = (x, weight, bias if bias is not None else weight, y, rows, n)
    flags = {"K": k, "M_PAD": m_pad, "HAS_BIAS": bias is not None, "ACCUM": add_to is not None}
    flags["IEEE"] = x.dtype == torch.float32
    if INTERPRET:
        _skinny_kernel[(triton.cdiv(n, 16),)](*args, **flags, BN=16, BK=32)
        return y

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(n, meta["BN"]),)

    (_skinny_accum_tuned if add_to is not None else _skinny_tuned)[grid](*args, **flags)
    return y
