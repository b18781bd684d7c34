"""Weight-only INT8/INT4 quantization: a module swap plus a state-dict transform.

Layout (that of THUDM/chatglm2-6b-int4): each layer's four big linears keep `weight` as int8
and add `weight_scale` fp16 [out]; w ≈ q * scale[:, None], per-row symmetric with
scale = max|w| / 127 (8 bits) or / 7 (4 bits). For 4 bits `weight` is [out, in / 2] and each
byte holds two signed nibbles: high nibble = even column, low nibble = odd column.
Everything else (embeddings, norms, biases, output layer) stays floating point.

The CPU path dequantizes the weight and runs a normal matmul; storage stays packed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Quantized linears of each layer, as module paths under transformer.encoder.layers.N.
TARGETS = (
    "self_attention.query_key_value",
    "self_attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
)
MODES = {"int4": 4, "int8": 8}


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in [-8, 7] [out, in] → int8 bytes [out, in / 2] (even column high)."""
    q16 = q.to(torch.int16)
    high, low = q16[:, 0::2] & 0x0F, q16[:, 1::2] & 0x0F  # [out, in / 2] each
    return ((high << 4) | low).to(torch.uint8).view(torch.int8)


def unpack_int4(packed: Tensor) -> Tensor:
    """int8 bytes [out, in / 2] → int8 values [out, in]."""
    p16 = packed.to(torch.int16)
    high = p16 >> 4  # arithmetic shift of the signed byte: the high nibble, sign included
    low = ((p16 & 0x0F) ^ 0x08) - 0x08  # sign-extend the low nibble
    return torch.stack([high, low], dim=-1).flatten(1).to(torch.int8)  # [out, in]


def quantize_weight(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """float [out, in] → (int8 [out, in] or packed [out, in / 2], fp16 scale [out])."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if bits == 4 and weight.shape[1] % 2:
        raise ValueError(f"int4 needs an even number of input columns, got {weight.shape[1]}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.float()
    scale = (w.abs().amax(dim=1) / qmax).to(torch.float16)  # [out]
    # Quantize against the stored fp16 scale so that dequantization sees the same numbers;
    # an all-zero row has scale 0 and quantizes to zeros.
    divisor = torch.where(scale == 0, 1.0, scale.float())  # [out]
    q = torch.round(w / divisor[:, None]).clamp(-qmax, qmax).to(torch.int8)  # [out, in]
    return (pack_int4(q) if bits == 4 else q), scale


def dequantize_weight(weight: Tensor, scale: Tensor, bits: int, dtype: torch.dtype) -> Tensor:
    q = unpack_int4(weight) if bits == 4 else weight  # [out, in]
    return q.to(dtype) * scale.to(dtype)[:, None]


class QuantizedLinear(nn.Module):
    """Drop-in for nn.Linear with the checkpoint's `weight` (int8) and `weight_scale` (fp16)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, bits: int, device: Any = None
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        columns = in_features // 2 if bits == 4 else in_features
        self.weight: Tensor
        self.weight_scale: Tensor
        self.register_buffer(
            "weight", torch.zeros(out_features, columns, dtype=torch.int8, device=device)
        )
        self.register_buffer(
            "weight_scale", torch.zeros(out_features, dtype=torch.float16, device=device)
        )
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int) -> QuantizedLinear:
        weight = linear.weight.detach()
        q = cls(
            linear.in_features, linear.out_features, linear.bias is not None, bits, weight.device
        )
        q.weight, q.weight_scale = quantize_weight(weight, bits)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return q

    def forward(self, x: Tensor) -> Tensor:
        weight = dequantize_weight(self.weight, self.weight_scale, self.bits, x.dtype)  # [out, in]
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def _target_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent module, attribute, child) for each quantizable linear of every layer."""
    found = []
    for layer in model.transformer.encoder.layers:  # type: ignore[union-attr]
        for target in TARGETS:
            parent_path, attr = target.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            found.append((parent, attr, getattr(parent, attr)))
    return found


def swap_linears(model: nn.Module, bits: int) -> None:
    """Replace the target nn.Linear modules by empty QuantizedLinear ones (for loading)."""
    for parent, attr, linear in _target_linears(model):
        assert isinstance(linear, nn.Linear)
        bias, device = linear.bias is not None, linear.weight.device
        empty = QuantizedLinear(linear.in_features, linear.out_features, bias, bits, device)
        setattr(parent, attr, empty)


def quantize_model(model: nn.Module, bits: int) -> None:
    """Quantize a loaded floating-point model in place."""
    for parent, attr, linear in _target_linears(model):
        if isinstance(linear, nn.Linear):
            setattr(parent, attr, QuantizedLinear.from_linear(linear, bits))


def is_quantized_weight(name: str) -> bool:
    """Whether a checkpoint key is the `weight` of one of the quantized linears."""
    return name.startswith("transformer.encoder.layers.") and any(
        name.endswith(f".{target}.weight") for target in TARGETS
    )


def mode_bits(quantize: str | None) -> int:
    if quantize is None:
        return 0
    if quantize not in MODES:
        raise ValueError(f"quantize must be None, 'int4' or 'int8', got {quantize!r}")
    return MODES[quantize]
