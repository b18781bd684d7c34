"""The training forward of a floating-point GLMBlock, written for speed.

The same function as `GLMBlock.forward` without a KV cache (model.py), with the P-tuning
prefix keys/values in front of every layer's, split into two pure functions of tensors
around the attention:

- `attention_inputs` (RMSNorm, query_key_value, rotary, prefix concatenation) and
  `block_output` (dense, residual, RMSNorm, SwiGLU MLP, residual) hold the elementwise work
  that the modules run as ~40 separate fp32 kernels a layer, forward and backward;
  `torch.compile` fuses it around the cuBLAS matmuls on CUDA (compiled once for all layers,
  since the weights are arguments).
- `attend` runs one flash-attention call: the key/value groups are read in place
  (`enable_gqa`, no `repeat_interleave` to 32 heads) and causality is aligned to the bottom
  right (`causal_lower_right`), so the P prefix keys, which come first, are visible to every
  query without a mask tensor (a boolean mask keeps SDPA off flash attention).

Only for bases whose linears are `nn.Linear`; quantized bases keep the modules' forward
(prefix_tuning.py), whose int4 matmul has its own backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kbqa.chatglm.model import GLMBlock, apply_rotary


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm in fp32, as model.RMSNorm computes it."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def attention_inputs(
    x: Tensor,
    norm_weight: Tensor,
    qkv_weight: Tensor,
    qkv_bias: Tensor | None,
    rope: Tensor,
    prefix: Tensor | None,
    eps: float,
    heads: int,
    groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x [B, S, hidden] → (normed x [B, S, hidden], q [B, N, S, D], k and v [B, G, P + S, D]).

    rope: [S, D/4, 2]; prefix: [2, G, P, D] (keys, values; no rotary) or None.
    """
    batch, seq, _ = x.shape
    h = _rms_norm(x, norm_weight, eps)
    qkv = F.linear(h, qkv_weight, qkv_bias)  # [B, S, (N + 2G) * D]
    d = qkv.shape[-1] // (heads + 2 * groups)
    q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
    q = apply_rotary(q.view(batch, seq, heads, d), rope).transpose(1, 2)  # [B, N, S, D]
    k = apply_rotary(k.view(batch, seq, groups, d), rope).transpose(1, 2)  # [B, G, S, D]
    v = v.view(batch, seq, groups, d).transpose(1, 2)  # [B, G, S, D]
    if prefix is not None:
        pk = prefix[0].to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1)  # [B, G, P, D]
        pv = prefix[1].to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1)  # [B, G, P, D]
        k = torch.cat([pk, k], dim=2)  # [B, G, P + S, D]
        v = torch.cat([pv, v], dim=2)  # [B, G, P + S, D]
    return h, q, k, v


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of q [B, N, S, D] over k, v [B, G, T, D] whose first T - S keys (the
    prefix) every query sees. Returns [B, S, N * D]."""
    batch, heads, seq, d = q.shape
    total = k.shape[2]
    mask: Any = None
    if total > seq and q.is_cuda:
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(seq, total)  # flash attention's own causal alignment
    elif total > seq:
        key_positions = torch.arange(seq - total, seq, device=q.device)  # [T]
        mask = key_positions.unsqueeze(0) <= torch.arange(seq, device=q.device).unsqueeze(1)
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True
    )  # [B, N, S, D]
    return y.transpose(1, 2).reshape(batch, seq, heads * d)


def block_output(
    x: Tensor,
    h: Tensor,
    y: Tensor,
    dense_weight: Tensor,
    dense_bias: Tensor | None,
    norm_weight: Tensor,
    up_weight: Tensor,
    up_bias: Tensor | None,
    down_weight: Tensor,
    down_bias: Tensor | None,
    eps: float,
    residual_after_norm: bool,
) -> Tensor:
    """The rest of the block: x, normed x [B, S, hidden] and attention y [B, S, N * D] →
    the block's output [B, S, hidden]."""
    x = (h if residual_after_norm else x) + F.linear(y, dense_weight, dense_bias)
    h = _rms_norm(x, norm_weight, eps)
    gate, up = F.linear(h, up_weight, up_bias).chunk(2, dim=-1)  # [B, S, F] each
    return (h if residual_after_norm else x) + F.linear(F.silu(gate) * up, down_weight, down_bias)


def is_float_block(layer: GLMBlock) -> bool:
    """True when every linear of layer is a plain nn.Linear (not quantized)."""
    attn, mlp = layer.self_attention, layer.mlp
    linears = (attn.query_key_value, attn.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
    return all(type(m) is nn.Linear for m in linears)


_Fn = Callable[..., Any]
_compiled: dict[str, tuple[_Fn, _Fn]] = {}


def _functions(compiled: bool) -> tuple[_Fn, _Fn]:
    if not compiled:
        return attention_inputs, block_output
    if "fns" not in _compiled:
        # One compilation serves all layers (weights are arguments); shapes that change
        # between batches make it compile once more with dynamic shapes.
        _compiled["fns"] = (
            torch.compile(attention_inputs, fullgraph=True),
            torch.compile(block_output, fullgraph=True),
        )
    return _compiled["fns"]


def block_forward(
    layer: GLMBlock, x: Tensor, rope: Tensor, prefix: Tensor | None, compiled: bool
) -> Tensor:
    """layer's uncached forward of x [B, S, hidden] with prefix [2, G, P, D] (or None)."""
    pre, post = _functions(compiled)
    attn, mlp = layer.self_attention, layer.mlp
    ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
    qkv, dense = attn.query_key_value, attn.dense
    up, down = mlp.dense_h_to_4h, mlp.dense_4h_to_h
    h, q, k, v = pre(
        x, ln1.weight, qkv.weight, qkv.bias, rope, prefix, ln1.eps, attn.n_head, attn.n_group
    )
    y = attend(q, k, v)
    return post(
        x, h, y, dense.weight, dense.bias, ln2.weight, up.weight, up.bias,
        down.weight, down.bias, ln2.eps, layer.residual_after_norm,
    )  # fmt: skip
