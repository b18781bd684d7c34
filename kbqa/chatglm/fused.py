"""The ops of the fast forward (forward.py): each runs a Triton kernel where the kernels run
(triton_use.py; kernels.py) and its plain-torch reference elsewhere, which is also what the
tests hold the kernels to. `linear` chooses a weight's kernel by the weight's kind and the
number of rows (the table in README.md).

Numerics differ from the eager model in one deliberate way: the residual stream is kept in
fp32 (float64 for a float64 model) rather than the model dtype, and the GEMV rows normalise
and apply SwiGLU in fp32 without rounding in between.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kbqa.chatglm.model import RMSNorm, apply_rotary
from kbqa.chatglm.parallel_linear import RowParallelLinear
from kbqa.chatglm.quantize import QuantizedLinear, dequantize_weight
from kbqa.chatglm.triton_use import kernels_run_on

# Matmuls on quantized weights over many rows dequantize this many weights at a time (64 MB in
# fp16), so the temporary stays small next to the 4 GB of int4 weights (the 8k prefill's
# memory goal: its chunks are 1,024 rows); over more rows (a whole prompt) a weight is
# dequantized whole, one kernel and one cuBLAS matmul: 2,000 tokens took 55 ms in blocks,
# 48 whole, on an H100 (bench/RESULTS.md).
DEQUANT_BLOCK = 32 * 1024 * 1024
WHOLE_DEQUANT_ROWS = 1024
GEMV_MAX_ROWS = 2  # rows that go through the GEMV with its fusions (it reads W once per row)


def triton_for(t: Tensor) -> ModuleType | None:
    """The kernels module when they run on `t`'s device (triton_use.py decides)."""
    if not kernels_run_on(t.device):
        return None
    from kbqa.chatglm import kernels  # imports triton

    return kernels


@dataclass
class LinearWeights:
    """What the kernels need from nn.Linear or QuantizedLinear. weight: float [N, K], int8
    [N, K] (8 bits) or int32 words [N, K/8] (4 bits: the checkpoint's bytes, reinterpreted);
    dtype: the model dtype that products are rounded to."""

    weight: Tensor
    scale: Tensor | None
    bias: Tensor | None
    bits: int
    in_features: int
    out_features: int
    dtype: torch.dtype
    all_reduce: bool = False
    """A row-parallel weight (tensor_parallel.py): products are summed over the ranks."""

    @classmethod
    def of(cls, module: nn.Module, dtype: torch.dtype) -> LinearWeights:
        bias = getattr(module, "bias", None)  # of any of the three kinds below
        bias = bias.detach() if bias is not None else None
        if isinstance(module, RowParallelLinear):
            return replace(cls.of(module.local, dtype), bias=bias, all_reduce=True)
        if isinstance(module, QuantizedLinear):
            weight = module.weight
            if module.bits == 4 and module.in_features % 8 == 0:
                weight = weight.view(torch.int32)  # [N, K/2] bytes → [N, K/8] words
            return cls(
                weight, module.weight_scale, bias, module.bits, module.in_features,
                module.out_features, dtype,
            )  # fmt: skip
        assert isinstance(module, nn.Linear)
        weight = module.weight.detach()
        return cls(weight, None, bias, 16, module.in_features, module.out_features, dtype)

    @property
    def packed(self) -> bool:
        """int4 weights as whole int32 words (what the int4 kernels read)."""
        return self.bits == 4 and self.weight.dtype == torch.int32

    def rows(self, start: int, stop: int) -> LinearWeights:
        """Output features start..stop-1 as weights of their own (views: nothing copied)."""
        return LinearWeights(
            self.weight[start:stop],
            self.scale[start:stop] if self.scale is not None else None,
            self.bias[start:stop] if self.bias is not None else None,
            self.bits, self.in_features, stop - start, self.dtype,
        )  # fmt: skip

    def columns(self, start: int, stop: int) -> LinearWeights:
        """Input features start..stop-1 (start a multiple of 8): y over them is a part of the
        whole product, so the bias goes with the part from column 0 only. Float and int8
        weights are views; int4 words are copied (the kernels read whole rows of words)."""
        if start % 8:
            raise ValueError(f"a column block starts at a multiple of 8, not {start}")
        weight = self.weight
        if self.packed:
            weight = weight[:, start // 8 : -(-stop // 8)].contiguous()
        elif self.bits == 4:
            weight = weight[:, start // 2 : -(-stop // 2)]  # the checkpoint's bytes
        else:
            weight = weight[:, start:stop]
        bias = self.bias if start == 0 else None
        return LinearWeights(
            weight, self.scale, bias, self.bits, stop - start, self.out_features, self.dtype
        )

    def dequantized(self, rows: slice, dtype: torch.dtype) -> Tensor:
        """Rows of the weight as floats [rows, K]."""
        w = self.weight[rows]
        if self.bits == 16:
            return w.to(dtype)
        assert self.scale is not None
        return dequantize(w, self.scale[rows], self.bits, dtype)


def dequantize(weight: Tensor, scale: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    """int8 [N, K], int4 bytes [N, K/2] or int4 words [N, K/8], scale [N] → floats [N, K]:
    int4 words by one kernel pass where the kernels run (bit for bit the torch ops' result)."""
    if weight.dtype == torch.int32:
        kernels = triton_for(weight)
        if kernels is not None:
            rows, words = weight.shape
            out = torch.empty(rows, words * 8, dtype=dtype, device=weight.device)
            kernels.dequant_int4(weight, scale, out)
            return out
        weight = weight.view(torch.int8)  # back to the checkpoint's [N, K/2] bytes
    return dequantize_weight(weight, scale, bits, dtype)


@dataclass
class Norm:
    weight: Tensor
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> Norm | None:
        if isinstance(module, RMSNorm):
            return cls(module.weight.detach(), module.eps)
        return None  # nn.Identity (post_layer_norm False)


def linear(
    lw: LinearWeights,
    x: Tensor,
    *,
    norm: Norm | None = None,
    glu: bool = False,
    add_to: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """y = W · x' + bias for x [M, K], x' = RMSNorm(x) * norm or x; with glu the rows
    [gate; up] of y become silu(gate) * up. Returns y [M, N] ([M, N/2]) in out_dtype (default
    the model dtype); with add_to (the residual stream [M, N]) adds y into it in place and
    returns it."""
    if lw.all_reduce:
        return _row_parallel(lw, x, add_to, out_dtype)
    kernels = triton_for(x)
    rows = x.shape[0]
    fused_add = add_to is None or add_to.dtype == torch.float32  # atomics add into fp32
    # A column block of a float or int8 weight is a strided view, which only cuBLAS and the
    # dequantization read (forward.py splits a long prefill's MLP so).
    whole_rows = lw.weight.is_contiguous()
    gemv_ok = whole_rows and (lw.bits != 4 or lw.packed)
    if kernels is not None and rows <= GEMV_MAX_ROWS and fused_add and gemv_ok:
        if add_to is None:
            width = lw.out_features // 2 if glu else lw.out_features
            add_to_or_out = torch.empty(rows, width, dtype=out_dtype or lw.dtype, device=x.device)
        else:
            add_to_or_out = add_to
        kernels.gemv(
            lw.weight, lw.scale, lw.bias, x.contiguous(), norm.weight if norm else None,
            norm.eps if norm else 0.0, glu, add_to_or_out, add_to is not None, lw.bits,
            lw.in_features,
        )  # fmt: skip
        return add_to_or_out
    h = rmsnorm(x, norm, lw.dtype) if norm is not None else x.to(lw.dtype)
    into = add_to if add_to is not None and not glu and fused_add else None
    y = _matmul(lw, h, kernels, into)
    if y is into:  # the kernel added it into the residual stream
        return y
    if glu:
        y = swiglu(y)
    if add_to is not None:
        return add_to.add_(y)
    return y if out_dtype is None else y.to(out_dtype)


def _row_parallel(
    lw: LinearWeights, x: Tensor, add_to: Tensor | None, out_dtype: torch.dtype | None
) -> Tensor:
    """A row-parallel linear: this rank's partial product, summed over the ranks by one
    all-reduce, then the bias once. Into the residual stream the partial products are summed
    in its dtype (fp32), as one process adds its whole product."""
    local = replace(lw, bias=None, all_reduce=False)
    if add_to is None:
        y = linear(local, x, out_dtype=out_dtype)
        dist.all_reduce(y)
        return y if lw.bias is None else y + lw.bias.to(y.dtype)
    part = linear(local, x, add_to=torch.zeros_like(add_to))  # [M, N]
    dist.all_reduce(part)
    if lw.bias is not None:
        part += lw.bias
    return add_to.add_(part)


def _matmul(
    lw: LinearWeights, h: Tensor, kernels: ModuleType | None, add_to: Tensor | None
) -> Tensor:
    """h · Wᵀ + bias; the few-row kernels add it into add_to (fp32) when given, returning
    add_to; the others return the product."""
    rows = h.shape[0]
    if lw.bits == 16:
        if kernels is not None:
            from kbqa.chatglm import batched_kernels  # imported where the kernels run

            if rows <= batched_kernels.SKINNY_MAX_ROWS and lw.weight.is_contiguous():
                return batched_kernels.skinny_linear(h, lw.weight, lw.bias, add_to)
        return F.linear(h, lw.weight, lw.bias)
    if kernels is not None and lw.packed and rows <= kernels.INT4_MATMUL_MAX_ROWS:
        assert lw.scale is not None
        return kernels.int4_linear(h, lw.weight, lw.scale, lw.bias, add_to)
    if rows > WHOLE_DEQUANT_ROWS:
        return F.linear(h, lw.dequantized(slice(None), h.dtype), lw.bias)
    out = torch.empty(rows, lw.out_features, dtype=h.dtype, device=h.device)
    # Blocks of a multiple of 128 output features: an odd width (2,449 rows of 4h→h) sends
    # cuBLAS to slow kernels, which made an int4 prefill twice as slow (bench/RESULTS.md).
    step = max(128, DEQUANT_BLOCK // lw.in_features // 128 * 128)
    for r0 in range(0, lw.out_features, step):
        block = slice(r0, min(r0 + step, lw.out_features))
        out[:, block] = h @ lw.dequantized(block, h.dtype).t()  # [M, block]
    if lw.bias is not None:
        out += lw.bias.to(h.dtype)
    return out


def rmsnorm(x: Tensor, norm: Norm, dtype: torch.dtype) -> Tensor:
    """x [S, H] → RMSNorm(x) * weight [S, H] in dtype, normalised in fp32 as the model does."""
    h = torch.empty(x.shape, dtype=dtype, device=x.device)
    kernels = triton_for(x)
    if kernels is not None:
        kernels.rmsnorm(x, norm.weight, norm.eps, h)
        return h
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return (norm.weight.float() * xf).to(dtype)


def swiglu(gu: Tensor) -> Tensor:
    """gu [S, 2F] (gate first) → silu(gate) * up [S, F]."""
    kernels = triton_for(gu)
    if kernels is not None:
        out = torch.empty(gu.shape[0], gu.shape[1] // 2, dtype=gu.dtype, device=gu.device)
        kernels.swiglu(gu, out)
        return out
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


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
    """Rotate q (in place in qkv) and k of token t by its position pos[t], and write k, v into
    cache row rows[t] at slot prefix + pos[t].

    qkv [T, (N + 2G) * D] contiguous; rope [seq_length, D/4, 2]; pos, rows [T];
    k_cache, v_cache [R, G, slots, D].
    """
    kernels = triton_for(qkv)
    if kernels is not None:
        kernels.rope_cache(qkv, rope, pos, rows, k_cache, v_cache, prefix, heads)
        return
    seq = qkv.shape[0]
    _, groups, _, d = k_cache.shape
    angles = rope[pos]  # [T, D/4, 2]
    q = qkv[:, : heads * d].view(1, seq, heads, d)
    k = qkv[:, heads * d : (heads + groups) * d].view(1, seq, groups, d)
    v = qkv[:, (heads + groups) * d :].view(seq, groups, d)
    q.copy_(apply_rotary(q, angles))
    slots = pos + prefix
    k_cache[rows, :, slots] = apply_rotary(k, angles)[0]  # [T, G, D]
    v_cache[rows, :, slots] = v


def attention_decode(
    qkv: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    pos: Tensor,
    prefix: int,
    heads: int,
    n_keys: int,
) -> Tensor:
    """One query token per row: row b of qkv [B, (N + 2G) * D] (q rotated) over slots
    0..prefix + pos[b] of cache row b (all < n_keys) of k_cache, v_cache [R >= B, G, slots, D]
    → [B, N * D]."""
    kernels = triton_for(qkv)
    if kernels is not None:
        out: Tensor = kernels.attn_decode_rows(qkv, k_cache, v_cache, pos, prefix, heads, n_keys)
        return out
    batch = qkv.shape[0]
    _, groups, _, d = k_cache.shape
    # The N/G query heads of a group share its keys: as [B, G, N/G, D] they attend as N/G
    # query rows of one head, so each key is read once (no repeat_interleave copy).
    q = qkv[:, : heads * d].reshape(batch, groups, heads // groups, d)
    keys, values = k_cache[:batch, :, :n_keys], v_cache[:batch, :, :n_keys]  # [B, G, T, D]
    visible = torch.arange(n_keys, device=qkv.device) <= (pos + prefix).unsqueeze(1)  # [B, T]
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None, :])
    return y.reshape(batch, heads * d)


def attention_prefill(
    qkv: Tensor, k_cache: Tensor, v_cache: Tensor, heads: int, first: int | Tensor
) -> Tensor:
    """Causal attention of S queries at cache slots first..first+S-1 over slots 0..first+S-1.

    qkv [S, (N + 2G) * D] (q rotated, k, v already in the cache); caches [G, slots, D] (one
    row). Returns [S, N * D]. A whole prompt (first 0) goes to flash attention through SDPA;
    a chunk after others (or after a P-tuning prefix) to our kernel, which reads the cache in
    place (SDPA's lower-right causal mask with GQA falls back to materialised scores here:
    268 MB for a 512-token chunk at 8k). `first` may be a tensor [1] on the device, which the
    kernel reads there (a CUDA graph of a chunk then serves every position; forward.py).
    """
    seq = qkv.shape[0]
    d = k_cache.shape[2]
    kernels = triton_for(qkv)
    in_memory = isinstance(first, Tensor)
    if kernels is not None and (in_memory or first > 0):
        out = torch.empty(seq, heads * d, dtype=qkv.dtype, device=qkv.device)
        if isinstance(first, Tensor):
            first = first.to(qkv.device)  # a split model's later layers (devices.py)
        kernels.attn_prefill(qkv, k_cache, v_cache, first, out)
        return out
    first = int(first)  # the torch ops: positions on the host (no graphs here)
    total = first + seq
    q = qkv[:, : heads * d].view(1, seq, heads, d).transpose(1, 2)  # [1, N, S, D]
    k = k_cache[:, :total].unsqueeze(0)  # [1, G, T, D]
    v = v_cache[:, :total].unsqueeze(0)
    if first == 0:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        from torch.nn.attention.bias import causal_lower_right

        mask: Any = causal_lower_right(seq, total)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return y.transpose(1, 2).reshape(seq, heads * d)  # [S, N * D]
