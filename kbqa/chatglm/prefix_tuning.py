"""P-tuning v2 pieces for training: a trainable prefix on a frozen base, and the loss.

The base model (floating point or INT4/INT8) is frozen; only the prefix encoder learns.
Gradients still flow *through* the base to the prefix keys/values of every layer, so the
quantized linears need a backward: `RecomputedQuantizedLinear` dequantizes its weight again in
the backward instead of having autograd keep every layer's dequantized copy alive.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kbqa.chatglm.fused import dequantize
from kbqa.chatglm.model import ChatGLM2Model, PrefixEncoder
from kbqa.chatglm.quantize import QuantizedLinear
from kbqa.chatglm.train_block import block_forward, is_float_block
from kbqa.chatglm.triton_use import kernels_run_on

IGNORE = -100  # label of a position that carries no loss (prompt, padding)


def attach_prefix(
    model: ChatGLM2Model, pre_seq_len: int, projection: bool, seed: int
) -> PrefixEncoder:
    """Give model a fresh fp32 prefix encoder (the only trainable part) and freeze the rest.

    The encoder stays fp32 whatever the base's dtype: it holds the master weights that AdamW
    updates; the attention casts its keys/values to the activations' dtype.
    """
    config = dataclasses.replace(
        model.config, pre_seq_len=pre_seq_len, prefix_projection=projection
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        encoder = PrefixEncoder(config).to(model.device)
    finally:
        torch.random.set_rng_state(generator_state)
    model.requires_grad_(False)
    encoder.requires_grad_(True)
    # The model's config object is shared by its modules: update it in place (as loading does).
    model.config.pre_seq_len = pre_seq_len
    model.config.prefix_projection = projection
    model.transformer.prefix_encoder = encoder
    _swap_quantized(model)
    return encoder


def _dequantize(weight: Tensor, scale: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    """The float weight [out, in]: one Triton pass for int4 on CUDA (bit for bit the same as
    the torch ops, which make several passes over it: it is done three times a step)."""
    if bits == 4 and weight.shape[1] % 4 == 0 and kernels_run_on(weight.device):
        weight = weight.view(torch.int32)  # whole words, which the kernel reads
    return dequantize(weight, scale, bits, dtype)


class _DequantizedMatmul(torch.autograd.Function):
    """y = x @ dequant(w).T + b, saving only the packed weight and its scale for backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor | None, bits: int
    ) -> Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.bits = bits
        w = _dequantize(weight, scale, bits, x.dtype)  # [out, in], freed on return
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        weight, scale = ctx.saved_tensors
        w = _dequantize(weight, scale, ctx.bits, grad.dtype)  # [out, in]
        return grad @ w, None, None, None, None  # only x gets a gradient: the base is frozen


class RecomputedQuantizedLinear(QuantizedLinear):
    """QuantizedLinear whose backward dequantizes again rather than keeping the fp weight."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        result: Tensor = _DequantizedMatmul.apply(
            x, self.weight, self.weight_scale, bias, self.bits
        )
        return result


def _swap_quantized(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is QuantizedLinear:
                swapped = RecomputedQuantizedLinear.__new__(RecomputedQuantizedLinear)
                swapped.__dict__ = child.__dict__  # same buffers and parameters, new forward
                setattr(module, name, swapped)


def hidden_states(
    model: ChatGLM2Model, input_ids: Tensor, recompute: bool, compiled: bool = False
) -> Tensor:
    """input_ids [B, S] → final hidden states [B, S, hidden], uncached.

    A floating-point base runs train_block's forward (flash attention over the grouped keys;
    compiled: its elementwise work fused by torch.compile); a quantized one its modules.
    recompute: keep only each layer's input for backward and run the layer again there
    (activation checkpointing), trading about one more forward for most activation memory.
    """
    transformer = model.transformer
    blocks = transformer.encoder.blocks()
    fast = all(is_float_block(layer) for layer in blocks)
    if not recompute and not fast:
        return transformer(input_ids)
    # The uncached forward of ChatGLMTransformer, layer by layer.
    seq, p, device = input_ids.shape[1], transformer.prefix_len, input_ids.device
    positions = torch.arange(seq, device=device)  # [S]
    key_positions = torch.arange(-p, seq, device=device)  # [P + S]; the prefix is always visible
    mask = key_positions.unsqueeze(0) <= positions.unsqueeze(1)  # [S, P + S] (modules only)
    rope = transformer.rope[positions]  # [S, D/4, 2]
    prefix = transformer.prefix_encoder() if transformer.prefix_encoder is not None else None
    x = transformer.embedding(input_ids)  # [B, S, hidden]
    for i, layer in enumerate(blocks):
        layer_prefix = prefix[i] if prefix is not None else None  # [2, G, P, D]
        if fast and recompute:
            x = checkpoint(
                block_forward, layer, x, rope, layer_prefix, compiled, use_reentrant=False
            )
        elif fast:
            x = block_forward(layer, x, rope, layer_prefix, compiled)
        else:
            x = checkpoint(layer, x, rope, mask, None, layer_prefix, use_reentrant=False)
    return transformer.encoder.final_layernorm(x)


def loss_sum(
    model: ChatGLM2Model,
    input_ids: Tensor,
    labels: Tensor,
    recompute: bool,
    compiled: bool = False,
) -> Tensor:
    """Summed next-token cross-entropy over the labelled positions (fp32 scalar).

    input_ids, labels: [B, S]; labels[b, t] is the token expected at t (IGNORE where none).
    Logits are computed only where a label exists: the vocabulary projection of every
    position would be the largest activation of the step.
    """
    hidden = hidden_states(model, input_ids, recompute, compiled)[:, :-1]  # [B, S-1, hidden]
    targets = labels[:, 1:]  # [B, S-1]: position t predicts token t + 1
    keep = targets != IGNORE
    logits = model.transformer.output_layer(hidden[keep])  # [T, vocab]
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")
