"""Triton attention kernels for ChatGLM2: rotary + KV-cache write, split-K decode attention
(one query token per row, each row over its own cache row), and causal prefill attention over
one cache row (for chunked prefill).

Imported only through kernels.py (see there). A cache is all rows, [R, G, slots, D], or for
attn_prefill one row, [G, slots, D]; the P-tuning prefix (if any) is in slots 0..prefix-1
and position p in slot prefix + p. Query head h reads key/value group h // (N / G), straight
from the cache: no repeated copies.
"""
# Annotations: see kernels.py (`tl.tensor` for runtime arguments, never `int`).

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _dot(a: tl.tensor, b: tl.tensor, IEEE: tl.constexpr) -> tl.tensor:
    """a · b in fp32; IEEE (fp32 models): full-precision products, not TF32 (a compile-time
    branch, so fp16/bf16 kernels are unchanged)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee").to(tl.float32)
    return tl.dot(a, b).to(tl.float32)


# --------------------------------------------------------------------------------------------
# Rotary + KV-cache write: one program per (token, head of q | k | v). Token t rotates its q in
# place and writes k, v into cache row rows[t] at slot prefix + pos[t].


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
    t = tl.program_id(0)
    head = tl.program_id(1)  # 0..N-1: query heads, N..N+G-1: key groups, then value groups
    width: tl.constexpr = (N + 2 * G) * D
    src = qkv_ptr + t * width + head * D
    pos = tl.load(pos_ptr + t)
    cache_row = tl.load(rows_ptr + t)
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
    qkv: Tensor, rope: Tensor, pos: Tensor, rows: Tensor, k_cache: Tensor, v_cache: Tensor,
    prefix: int, heads: int,
) -> None:  # fmt: skip
    """fused.rope_cache (its shapes) on the kernel."""
    _, groups, slots, d = k_cache.shape
    _rope_cache_kernel[(qkv.shape[0], heads + 2 * groups)](
        qkv, rope, pos, rows, k_cache, v_cache, prefix, slots, heads, groups, d, num_warps=1
    )


# --------------------------------------------------------------------------------------------
# Decode attention, one query token per batch row: row b's N heads over slots 0..prefix+pos[b]
# of cache row b. Split-K: one program per (row, KV group, piece of the keys) with online
# softmax over BT-key blocks, then one per (row, head) combines the pieces. Reads the cache in
# place (no mask, no repeated key heads) and skips the pieces past each row's end.


@triton.jit
def _attn_rows_partial_kernel(
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    o_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    prefix: tl.tensor,
    stride_qb: tl.tensor,
    stride_row: tl.tensor,
    stride_g: tl.tensor,
    scale: tl.tensor,
    HPG: tl.constexpr,  # query heads per KV group
    QB: tl.constexpr,  # HPG padded to a power of two >= 16
    D: tl.constexpr,
    BT: tl.constexpr,
    SPLIT: tl.constexpr,  # keys per piece, a multiple of BT
    NSPLIT: tl.constexpr,
    IEEE: tl.constexpr,
) -> None:
    b = tl.program_id(0)
    group = tl.program_id(1)
    piece = tl.program_id(2)
    last = tl.load(pos_ptr + b) + prefix  # row b's last visible slot
    start = piece * SPLIT
    if start <= last:
        r = tl.arange(0, QB)
        r_ok = r < HPG
        d = tl.arange(0, D)
        q_offs = b * stride_qb + (group * HPG + r)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + q_offs, mask=r_ok[:, None], other=0.0)  # [QB, D]
        m = tl.full([QB], float("-inf"), dtype=tl.float32)
        l = tl.zeros([QB], dtype=tl.float32)  # noqa: E741
        acc = tl.zeros([QB, D], dtype=tl.float32)
        base = b * stride_row + group * stride_g
        end = tl.minimum(start + SPLIT, last + 1)
        for t0 in range(start, end, BT):
            t = t0 + tl.arange(0, BT)
            t_ok = t < end
            offs = base + t[:, None] * D + d[None, :]
            k = tl.load(k_ptr + offs, mask=t_ok[:, None], other=0.0)  # [BT, D]
            s = _dot(q, tl.trans(k), IEEE) * scale  # [QB, BT]
            s = tl.where(t_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l = l * alpha + tl.sum(p, axis=1)  # noqa: E741
            v = tl.load(v_ptr + offs, mask=t_ok[:, None], other=0.0)  # [BT, D]
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m = m_new
        groups = tl.num_programs(1)
        row = ((b * groups + group) * NSPLIT + piece) * QB + r  # [QB]
        tl.store(o_ptr + row[:, None] * D + d[None, :], acc, mask=r_ok[:, None])
        tl.store(ml_ptr + row * 2, m, mask=r_ok)
        tl.store(ml_ptr + row * 2 + 1, l, mask=r_ok)


@triton.jit
def _attn_rows_combine_kernel(
    o_ptr: tl.tensor,
    ml_ptr: tl.tensor,
    pos_ptr: tl.tensor,
    out_ptr: tl.tensor,
    prefix: tl.tensor,
    G: tl.constexpr,
    HPG: tl.constexpr,
    QB: tl.constexpr,
    D: tl.constexpr,
    SPLIT: tl.constexpr,
    NSPLIT: tl.constexpr,
    NS2: tl.constexpr,  # NSPLIT rounded up to a power of two
) -> None:
    b = tl.program_id(0)
    head = tl.program_id(1)
    group = head // HPG
    last = tl.load(pos_ptr + b) + prefix
    s = tl.arange(0, NS2)
    s_ok = s < (last // SPLIT + 1)  # the pieces the partial kernel wrote
    row = ((b * G + group) * NSPLIT + s) * QB + head % HPG  # [NS2]
    m = tl.load(ml_ptr + row * 2, mask=s_ok, other=float("-inf"))
    l = tl.load(ml_ptr + row * 2 + 1, mask=s_ok, other=0.0)  # noqa: E741
    weight = tl.exp(m - tl.max(m, axis=0))  # [NS2]; 0 for unwritten pieces
    d = tl.arange(0, D)
    o = tl.load(o_ptr + row[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
    y = tl.sum(weight[:, None] * o, axis=0) / tl.sum(weight * l, axis=0)  # [D]
    tl.store(out_ptr + (b * G * HPG + head) * D + d, y.to(out_ptr.dtype.element_ty))


def attn_decode_rows(
    qkv: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, prefix: int, heads: int,
    n_keys: int,
) -> Tensor:  # fmt: skip
    """fused.attention_decode (its shapes) on the kernels."""
    batch = qkv.shape[0]
    _, groups, _, head_dim = k_cache.shape
    hpg = heads // groups
    qb = max(16, triton.next_power_of_2(hpg))
    block = 64
    # Enough programs to spread the step over the SMs (~2 waves on an H100), in pieces of a
    # multiple of `block` keys.
    pieces_wanted = max(1, min(triton.cdiv(n_keys, block), triton.cdiv(264, batch * groups)))
    split = block * triton.cdiv(triton.cdiv(n_keys, pieces_wanted), block)
    nsplit = triton.cdiv(n_keys, split)
    partial = torch.empty(
        batch, groups, nsplit, qb, head_dim, dtype=torch.float32, device=qkv.device
    )
    ml = torch.empty(batch, groups, nsplit, qb, 2, dtype=torch.float32, device=qkv.device)
    out = torch.empty(batch, heads * head_dim, dtype=qkv.dtype, device=qkv.device)
    _attn_rows_partial_kernel[(batch, groups, nsplit)](
        qkv, k_cache, v_cache, pos, partial, ml, prefix, qkv.stride(0), k_cache.stride(0),
        k_cache.stride(1), head_dim**-0.5, HPG=hpg, QB=qb, D=head_dim, BT=block, SPLIT=split,
        NSPLIT=nsplit, IEEE=qkv.dtype == torch.float32, num_warps=4,
    )  # fmt: skip
    _attn_rows_combine_kernel[(batch, heads)](
        partial, ml, pos, out, prefix, G=groups, HPG=hpg, QB=qb, D=head_dim, SPLIT=split,
        NSPLIT=nsplit, NS2=triton.next_power_of_2(nsplit), num_warps=4,
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Prefill attention over the cache: queries are the last S of T visible slots (lower-right
# causal), so a chunk attends to everything before it. One program per (query block, head).


@triton.jit
def _attn_prefill_kernel(
    q_ptr: tl.tensor,
    k_ptr: tl.tensor,
    v_ptr: tl.tensor,
    out_ptr: tl.tensor,
    seq: tl.tensor,
    first: tl.tensor,  # cache slot of query 0 (or, with FIRST_IN_MEMORY, at first_ptr)
    first_ptr: tl.tensor,
    stride_q: tl.tensor,
    stride_g: tl.tensor,
    stride_t: tl.tensor,
    scale: tl.tensor,  # softmax scale * log2(e): exp2 below
    HPG: tl.constexpr,
    D: tl.constexpr,
    BM: tl.constexpr,
    BT: tl.constexpr,
    IEEE: tl.constexpr,
    FIRST_IN_MEMORY: tl.constexpr,  # read from device memory: one CUDA graph for every chunk
) -> None:
    block = tl.program_id(0)
    head = tl.program_id(1)
    group = head // HPG
    if FIRST_IN_MEMORY:
        first = tl.load(first_ptr).to(tl.int32)
    i = block * BM + tl.arange(0, BM)  # [BM] query rows
    i_ok = i < seq
    d = tl.arange(0, D)
    q_offs = i[:, None] * stride_q + head * D + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=i_ok[:, None], other=0.0)  # [BM, D]
    slot = first + i  # [BM]
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BM], dtype=tl.float32)  # noqa: E741
    acc = tl.zeros([BM, D], dtype=tl.float32)
    end = tl.minimum(first + block * BM + BM, first + seq)  # past the block's last query
    base = group * stride_g
    for t0 in range(0, end, BT):
        t = t0 + tl.arange(0, BT)
        offs = base + t[:, None] * stride_t + d[None, :]
        k = tl.load(k_ptr + offs, mask=(t < end)[:, None], other=0.0)  # [BT, D]
        s = _dot(q, tl.trans(k), IEEE) * scale  # [BM, BT]
        s = tl.where(t[None, :] <= slot[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)  # noqa: E741
        v = tl.load(v_ptr + offs, mask=(t < end)[:, None], other=0.0)  # [BT, D]
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m = m_new
    out = acc / l[:, None]
    n_all = tl.num_programs(1)
    o_offs = i[:, None] * (n_all * D) + head * D + d[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=i_ok[:, None])


# Launch configuration (BM, BT, warps, stages) by (head_dim, element bits): query rows and
# keys per step. bench/chatglm_engine_attn_gpu.py sweeps it for chatglm2-6b's chunks.
ATTN_PREFILL_TUNED: dict[tuple[int, int], tuple[int, int, int, int]] = {}
ATTN_PREFILL_DEFAULT = (64, 64, 4, 2)


def attn_prefill(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, first: int | Tensor, out: Tensor
) -> None:
    """q [S, >= N * D] (row stride any, head h at columns h*D..), caches [G, slots, D]; queries
    sit in slots first..first+S-1 and see slots 0..their own (first: an int, or a tensor [1]
    on the device, read there). out [S, N * D]."""
    seq = q.shape[0]
    groups, _, head_dim = k_cache.shape
    heads = out.shape[1] // head_dim
    bits = q.element_size() * 8
    bm, bt, warps, stages = ATTN_PREFILL_TUNED.get((head_dim, bits), ATTN_PREFILL_DEFAULT)
    _attn_prefill_kernel[(triton.cdiv(seq, bm), heads)](
        q, k_cache, v_cache, out, seq, first if isinstance(first, int) else 0,
        first if isinstance(first, Tensor) else q, q.stride(0), k_cache.stride(0),
        k_cache.stride(1), head_dim**-0.5 * 1.4426950408889634, HPG=heads // groups, D=head_dim,
        BM=bm, BT=bt, IEEE=q.dtype == torch.float32, FIRST_IN_MEMORY=isinstance(first, Tensor),
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
