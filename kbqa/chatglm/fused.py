"""Fused ops for the fast path (fast.py): each runs a Triton kernel on CUDA (kernels.py) and
the plain-torch reference of the same function elsewhere, which is also what tests hold the
kernels to.

Numerics differ from the eager model in one deliberate way: decode keeps more in fp32. The
GEMVs normalise their input in fp32 without rounding it to fp16, SwiGLU is applied to the fp32
sums, and the residual stream is fp32 (added to by atomics, so its last bits depend on the
order in which split-K programs finish).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kbqa.chatglm.model import RMSNorm, apply_rotary
from kbqa.chatglm.quantize import QuantizedLinear, dequantize_weight
from kbqa.chatglm.triton_use import kernels_run_on

# Prefill matmuls on quantized weights dequantize this many weights at a time (64 MB in fp16),
# so the temporary stays small next to the 4 GB of int4 weights.
DEQUANT_BLOCK = 32 * 1024 * 1024


def triton_for(t: Tensor) -> ModuleType | None:
    """The kernels module when they run on `t`'s device (triton_use.py decides)."""
    if not kernels_run_on(t.device):
        return None
    from kbqa.chatglm import kernels  # imports triton

    return kernels


@dataclass
class LinearWeights:
    """What a GEMV needs from nn.Linear or QuantizedLinear. weight: float [N, K], int8 [N, K]
    (8 bits) or int32 words [N, K/8] (4 bits: the checkpoint's bytes, reinterpreted)."""

    weight: Tensor
    scale: Tensor | None
    bias: Tensor | None
    bits: int
    in_features: int
    out_features: int

    @classmethod
    def of(cls, module: nn.Module) -> LinearWeights:
        if isinstance(module, QuantizedLinear):
            weight = module.weight
            if module.bits == 4 and module.in_features % 8 == 0:
                weight = weight.view(torch.int32)  # [N, K/2] bytes → [N, K/8] words
            bias = module.bias.detach() if module.bias is not None else None
            return cls(
                weight, module.weight_scale, bias, module.bits, module.in_features,
                module.out_features,
            )  # fmt: skip
        assert isinstance(module, nn.Linear)
        bias = module.bias.detach() if module.bias is not None else None
        return cls(module.weight.detach(), None, bias, 16, module.in_features, module.out_features)

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.weight, self.scale, self.bias) if t is not None]

    def dequantized(self, rows: slice, dtype: torch.dtype) -> Tensor:
        """Rows of the weight as floats [rows, K]."""
        w = self.weight[rows]
        if self.bits == 16:
            return w.to(dtype)
        assert self.scale is not None
        scale = self.scale[rows]
        if self.bits == 4:
            kernels = triton_for(w)
            if kernels is not None and w.dtype == torch.int32:
                out = torch.empty(w.shape[0], self.in_features, dtype=dtype, device=w.device)
                kernels.dequant_int4(w, scale, out)
                return out
            w = w.view(torch.int8)  # back to the checkpoint's [N, K/2] bytes
        return dequantize_weight(w, scale, self.bits, dtype)


@dataclass
class Norm:
    weight: Tensor
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> Norm | None:
        if isinstance(module, RMSNorm):
            return cls(module.weight.detach(), module.eps)
        return None  # nn.Identity (post_layer_norm False)


def linear_vec(
    lw: LinearWeights,
    x: Tensor,
    *,
    norm: Norm | None = None,
    glu: bool = False,
    accumulate: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """One token: y = W · x' (+ bias), x' = RMSNorm(x) * norm or x; with glu the rows
    [gate; up] become silu(gate) * up ([N/2]). x [K] → y [N] ([N/2]) of out_dtype; or, with
    accumulate (fp32 [N], the residual stream), accumulate += y in place and returned."""
    kernels = triton_for(x)
    rows = lw.out_features // 2 if glu else lw.out_features
    if kernels is not None and (lw.bits != 4 or lw.weight.dtype == torch.int32):
        if accumulate is not None:
            out = accumulate
        else:
            assert out_dtype is not None
            out = torch.empty(rows, dtype=out_dtype, device=x.device)
        kernels.gemv(
            lw.weight, lw.scale, lw.bias, x, norm.weight if norm else None,
            norm.eps if norm else 0.0, glu, out, accumulate is not None, lw.bits,
            lw.in_features,
        )  # fmt: skip
        return out
    xf = x.float()
    if norm is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean() + norm.eps) * norm.weight.float()
    y = lw.dequantized(slice(None), torch.float32) @ xf  # [N]
    if lw.bias is not None:
        y = y + lw.bias.float()
    if glu:
        gate, up = y.chunk(2)  # [N/2] each
        y = F.silu(gate) * up
    if accumulate is not None:
        return accumulate.add_(y)
    assert out_dtype is not None
    return y.to(out_dtype)


def linear_rows(lw: LinearWeights, h: Tensor) -> Tensor:
    """Prefill: h [S, K] → [S, N] through cuBLAS; quantized weights are dequantized a block
    of rows at a time."""
    if lw.bits == 16:
        return F.linear(h, lw.weight, lw.bias)
    out = torch.empty(h.shape[0], lw.out_features, dtype=h.dtype, device=h.device)
    step = max(1, DEQUANT_BLOCK // lw.in_features)
    for r0 in range(0, lw.out_features, step):
        rows = slice(r0, min(r0 + step, lw.out_features))
        out[:, rows] = h @ lw.dequantized(rows, h.dtype).t()  # [S, rows]
    if lw.bias is not None:
        out += lw.bias.to(h.dtype)
    return out


def rope_cache(
    qkv: Tensor,
    rope: Tensor,
    pos: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    heads: int,
    prefix: int,
) -> None:
    """Rotate q (in place in qkv) and k, and write k, v into the cache at slots prefix + pos.

    qkv [S, (N + 2G) * D] with unit column stride; rope [T, D/4, 2]; pos [S];
    k_cache, v_cache [G, slots, D].
    """
    kernels = triton_for(qkv)
    if kernels is not None:
        kernels.rope_cache(qkv, rope, pos, k_cache, v_cache, prefix)
        return
    seq = qkv.shape[0]
    groups, _, d = k_cache.shape
    rows = rope[pos]  # [S, D/4, 2]
    q = qkv[:, : heads * d].view(1, seq, heads, d)
    k = qkv[:, heads * d : (heads + groups) * d].view(1, seq, groups, d)
    v = qkv[:, (heads + groups) * d :].view(seq, groups, d)
    q.copy_(apply_rotary(q, rows))
    slots = pos + prefix
    k_cache[:, slots] = apply_rotary(k, rows)[0].transpose(0, 1)  # [G, S, D]
    v_cache[:, slots] = v.transpose(0, 1)


@dataclass
class AttnScratch:
    """Partial results of split-K decode attention: [G, pieces, QB, D] and [G, pieces, QB, 2]."""

    partial: Tensor
    ml: Tensor
    split: int

    @classmethod
    def for_cache(cls, k_cache: Tensor, heads: int) -> AttnScratch:
        groups, slots, d = k_cache.shape
        # Up to 64 pieces per group of a multiple of 64 keys: enough programs to spread one
        # token's attention over the SMs, few enough for the combine to read in one tile.
        split = 64 * -(-slots // (64 * 64))
        pieces = -(-slots // split)
        qb = max(16, 1 << (heads // groups - 1).bit_length())
        partial = torch.empty(groups, pieces, qb, d, dtype=torch.float32, device=k_cache.device)
        ml = torch.empty(groups, pieces, qb, 2, dtype=torch.float32, device=k_cache.device)
        return cls(partial, ml, split)


def attn_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, prefix: int, scratch: AttnScratch
) -> Tensor:
    """One query token: q [N * D] (rotated) over cache slots 0..prefix + pos → [N * D]."""
    kernels = triton_for(q)
    if kernels is not None:
        out = torch.empty_like(q)
        kernels.attn_decode(
            q, k_cache, v_cache, pos, prefix, out, scratch.partial, scratch.ml, scratch.split
        )
        return out
    groups, slots, d = k_cache.shape
    qf = q.float().view(groups, -1, d)  # [G, N/G, D]: head h reads group h // (N / G)
    scores = torch.einsum("ghd,gtd->ght", qf, k_cache.float()) * d**-0.5  # [G, N/G, slots]
    visible = torch.arange(slots, device=q.device) <= pos + prefix  # [slots]
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("ght,gtd->ghd", probs, v_cache.float()).reshape(-1).to(q.dtype)


def rmsnorm(x: Tensor, residual: Tensor | None, norm: Norm) -> tuple[Tensor, Tensor]:
    """x, residual [S, H] → (x + residual, RMSNorm(x + residual)), both in x's dtype."""
    x_out = torch.empty_like(x) if residual is not None else x
    h = torch.empty_like(x)
    kernels = triton_for(x)
    if kernels is not None:
        kernels.rmsnorm(x, residual, norm.weight, norm.eps, x_out, h)
        return x_out, h
    if residual is not None:
        x_out = x + residual
    xf = x_out.float()
    h = (norm.weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).to(
        x.dtype
    )
    return x_out, h


def swiglu(gu: Tensor) -> Tensor:
    """gu [S, 2F] (gate first) → silu(gate) * up [S, F]."""
    kernels = triton_for(gu)
    if kernels is not None:
        out = torch.empty(gu.shape[0], gu.shape[1] // 2, dtype=gu.dtype, device=gu.device)
        kernels.swiglu(gu, out)
        return out
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def attention_prefill(
    qkv: Tensor, k_cache: Tensor, v_cache: Tensor, heads: int, first: int
) -> Tensor:
    """Causal attention of S queries at cache slots first..first+S-1 over slots 0..first+S-1.

    qkv [S, (N + 2G) * D] (q rotated, k, v already in the cache); caches [G, slots, D].
    Returns [S, N * D]. A whole prompt (first 0) goes to flash attention through SDPA; a
    chunk after others (or after a P-tuning prefix) to our kernel, which reads the cache in
    place (SDPA's lower-right causal mask with GQA falls back to materialised scores here:
    268 MB for a 512-token chunk at 8k).
    """
    seq = qkv.shape[0]
    d = k_cache.shape[2]
    total = first + seq
    kernels = triton_for(qkv)
    if kernels is not None and first > 0:
        out = torch.empty(seq, heads * d, dtype=qkv.dtype, device=qkv.device)
        kernels.attn_prefill(qkv, k_cache, v_cache, first, out)
        return out
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
