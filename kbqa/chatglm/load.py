"""Build ChatGLM2 models: from a Hugging Face checkpoint folder, or randomly from a config.

Loading builds the model on the meta device, checks every checkpoint tensor's name, shape and
dtype against it while mapping, and hands the (memory-mapped) tensors over with
`load_state_dict(assign=True)`, so no second full copy of the weights is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kbqa.chatglm.checkpoint import (
    CheckpointError,
    Format,
    iter_tensors,
    read_config,
    write_config,
    write_weights,
)
from kbqa.chatglm.config import ChatGLM2Config
from kbqa.chatglm.devices import DeviceMap, log_split, materialize, parse_devices, plan
from kbqa.chatglm.model import ChatGLM2Model, RMSNorm
from kbqa.chatglm.ptuning import load_ptuning
from kbqa.chatglm.quantize import (
    QuantizedLinear,
    is_quantized_weight,
    mode_bits,
    quantize_model,
    quantize_weight,
    swap_linears,
)

__all__ = ["CheckpointError", "build_random", "load_pretrained", "save_pretrained"]

# The class to build: ChatGLM2Model, or the public ChatGLM2 above it (chatglm2.py), which
# passes itself in so that this module need not import it.
M = TypeVar("M", bound=ChatGLM2Model)

# In the original checkpoints but recomputed here.
IGNORED_KEYS = {"transformer.rotary_pos_emb.inv_freq"}


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def _resolve_bits(config: ChatGLM2Config, quantize: str | None) -> int:
    bits = mode_bits(quantize)
    stored = config.quantization_bit
    if stored and bits and bits != stored:
        raise ValueError(f"checkpoint is already int{stored}; it cannot be loaded as {quantize}")
    return bits or stored


def _shape_error(file: Path, name: str, got: Tensor, want: tuple[int, ...]) -> CheckpointError:
    return CheckpointError(f"{file}: {name} has shape {list(got.shape)}, expected {list(want)}")


def load_pretrained(
    cls: type[M],
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    ptuning_checkpoint: str | Path | None = None,
    devices: Sequence[str | torch.device] | None = None,
) -> M:
    """devices: split the layers over these (devices.py); `device` is then ignored."""
    folder = Path(path)
    try:
        config = ChatGLM2Config.from_dict(read_config(folder))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: invalid config ({exc})") from exc
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    bits = _resolve_bits(config, quantize)
    quantize_on_load = bits != config.quantization_bit  # a float checkpoint, quantized here

    with torch.device("meta"):
        model = cls(config)
    if bits:
        swap_linears(model, bits)
    device_map = plan(model, devices, dtype) if devices else None
    if device_map is not None:
        device = device_map.devices[0]
    # Where a checkpoint tensor goes: its layer range's device when split.
    place = device_map.device_of if device_map is not None else lambda name: device
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    for name, tensor, file in iter_tensors(folder):
        if name in IGNORED_KEYS:
            continue
        want = expected.get(name)
        if want is None:
            raise CheckpointError(f"{file}: unexpected tensor {name}")
        if name in state:
            raise CheckpointError(f"{file}: tensor {name} appears twice")
        if quantize_on_load and is_quantized_weight(name):
            module = model.get_submodule(name.removesuffix(".weight"))
            assert isinstance(module, QuantizedLinear)
            float_shape = (module.out_features, module.in_features)
            if tensor.shape != float_shape or not tensor.is_floating_point():
                raise _shape_error(file, name, tensor, float_shape)
            weight, scale = quantize_weight(tensor.to(place(name)), bits)
            state[name] = weight
            state[name.removesuffix("weight") + "weight_scale"] = scale
            continue
        if tensor.dtype == torch.int8 and want.dtype != torch.int8:
            raise CheckpointError(
                f"{file}: {name} is quantized (int8) but config.json has quantization_bit "
                f"{config.quantization_bit}"
            )
        if tensor.shape != want.shape:
            raise _shape_error(file, name, tensor, tuple(want.shape))
        if want.dtype == torch.int8:
            if tensor.dtype != torch.int8:
                raise CheckpointError(f"{file}: {name} is {tensor.dtype}, expected torch.int8")
            state[name] = tensor.to(place(name))
        elif not tensor.is_floating_point():
            raise CheckpointError(f"{file}: {name} is {tensor.dtype}, expected floating point")
        elif name.endswith(".weight_scale"):
            state[name] = tensor.to(place(name), torch.float16)  # the layout's scale dtype
        else:
            state[name] = tensor.to(place(name), dtype)
    if missing := sorted(expected.keys() - state.keys()):
        raise CheckpointError(
            f"{folder}: checkpoint lacks {len(missing)} tensor(s), first {missing[0]}"
        )

    model.load_state_dict(state, assign=True)
    model.transformer.reset_rope(device)
    model.eval().requires_grad_(False)
    config.quantization_bit = bits
    if ptuning_checkpoint is not None:
        load_ptuning(model, ptuning_checkpoint)
    if device_map is not None:
        _record_split(model, device_map)
    return model


def _record_split(model: ChatGLM2Model, device_map: DeviceMap) -> None:
    model.layer_split = tuple(zip(device_map.devices, device_map.ranges, strict=True))
    log_split(model, device_map)


def _coerce_config(config: ChatGLM2Config | dict[str, Any] | str) -> ChatGLM2Config:
    if isinstance(config, str):
        return ChatGLM2Config.from_name(config)
    if isinstance(config, dict):
        return ChatGLM2Config.from_dict(config)
    return dataclasses.replace(config)  # a copy: the model owns (and may update) its config


def init_random(model: nn.Module) -> None:
    """Weights that keep activations and logits near unit scale (good for tests)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.02)
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


def build_random(
    cls: type[M],
    config: ChatGLM2Config | dict[str, Any] | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    devices: Sequence[str | torch.device] | None = None,
) -> M:
    """devices: split the layers over these (devices.py); `device` is then ignored."""
    cfg = _coerce_config(config)
    device = torch.device(device)
    bits = _resolve_bits(cfg, quantize)
    device_map = None
    if devices:
        with torch.device("meta"):
            sizing = cls(dataclasses.replace(cfg))  # the final layout, to balance the ranges
        if bits:
            swap_linears(sizing, bits)
        parsed = parse_devices(devices)
        device_map = plan(sizing, parsed, dtype or default_dtype(parsed[0]))
        device = device_map.devices[0]
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = cls(cfg)
    model.to(dtype)  # still on meta: the weights are allocated once, in their final dtype
    if device_map is None:
        model.to_empty(device=device)
        model.transformer.reset_rope(device)
    else:
        materialize(model, device_map)
    init_random(model)
    if bits:
        quantize_model(model, bits)
    cfg.quantization_bit = bits
    if device_map is not None:
        _record_split(model, device_map)
    return model.eval().requires_grad_(False)


def save_pretrained(
    model: ChatGLM2Model, path: str | Path, format: Format = "bin", shards: int = 1
) -> None:
    """Write config.json and the weights in the Hugging Face layout (quantized ones included)."""
    folder = Path(path)
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith(".weight_scale"):
            state[name] = tensor.to(torch.float16)
    config = dataclasses.replace(model.config, torch_dtype=str(model.dtype).removeprefix("torch."))
    write_config(folder, config.to_dict())
    write_weights(folder, state, format=format, shards=shards)
