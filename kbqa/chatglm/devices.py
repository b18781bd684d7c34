"""The layer split: ChatGLM2's layers over several devices in contiguous ranges (a pipeline by
layer ranges, as the official `load_model_on_gpus` does), for cards too small for the model.

Range i holds layers `ranges[i]` on `devices[i]`; the embedding (and any P-tuning prefix
encoder, and the rotary table) sit on the first device, the final norm and the output layer on
the last. The ranges are balanced by parameter bytes in the final layout (quantized layers
count their packed bytes). The eager model hands the hidden states over where a layer's device
differs from the previous one's, and keeps each layer's KV cache on that layer's device
(model.py); its logits come back on the input's device, so that sampling needs no change. The
batching engine's fast forward does the same (forward.py, `SlotCache.ranges`), without CUDA
graphs where the devices differ (a graph is captured on one device).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kbqa.chatglm.model import ChatGLM2Model

log = logging.getLogger(__name__)

LAYER_PREFIX = "transformer.encoder.layers."
# Modules that sit on the last device; everything outside the layers and these is on the first.
LAST_DEVICE = ("transformer.encoder.final_layernorm", "transformer.output_layer")


def parse_devices(devices: Sequence[str | torch.device]) -> tuple[torch.device, ...]:
    """Torch devices from strings such as "cuda:0"; a bad entry raises ValueError naming it."""
    if not devices:
        raise ValueError("devices must list at least one device")
    parsed = []
    for entry in devices:
        try:
            parsed.append(torch.device(entry))
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"unknown device {entry!r} in devices") from exc
    return tuple(parsed)


def balance(layer_bytes: Sequence[int], first: int, last: int, parts: int) -> list[range]:
    """Contiguous, non-empty layer ranges, one per part, that minimise the largest part's bytes;
    `first` bytes (the embedding) count on the first part, `last` (output layer) on the last.

    An exact partition by dynamic programming: best[p][j] is the smallest possible largest part
    when the first j layers fill p parts. (28 layers and a few parts: microseconds.)
    """
    n = len(layer_bytes)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} layers over {parts} devices (one layer at least each)")
    weights = list(layer_bytes)
    weights[0] += first
    weights[-1] += last
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for p in range(1, parts + 1):
        for j in range(p, n - (parts - p) + 1):
            for i in range(p - 1, j):  # the last part holds layers i..j-1
                cost = max(best[p - 1][i], prefix[j] - prefix[i])
                if cost < best[p][j]:
                    best[p][j], cut[p][j] = cost, i
    ranges: list[range] = []
    j = n
    for p in range(parts, 0, -1):
        i = cut[p][j]
        ranges.append(range(i, j))
        j = i
    return ranges[::-1]


@dataclass(frozen=True)
class DeviceMap:
    """Which device holds what: layers `ranges[i]` on `devices[i]` (a device may repeat)."""

    devices: tuple[torch.device, ...]
    ranges: tuple[range, ...]

    @classmethod
    def of(cls, model: ChatGLM2Model) -> DeviceMap | None:
        """The split the loader recorded on `model` (None: it is on one device)."""
        if not model.layer_split:
            return None
        devices, ranges = zip(*model.layer_split, strict=True)
        return cls(tuple(devices), tuple(ranges))

    def layer_device(self, layer: int) -> torch.device:
        for device, layers in zip(self.devices, self.ranges, strict=True):
            if layer in layers:
                return device
        raise IndexError(f"layer {layer} is in no range")

    def part_of(self, name: str) -> int:
        """The range index a parameter or buffer (a state-dict key) belongs to."""
        if name.startswith(LAYER_PREFIX):
            layer = int(name[len(LAYER_PREFIX) :].split(".", 1)[0])
            return next(i for i, layers in enumerate(self.ranges) if layer in layers)
        if name.startswith(LAST_DEVICE):
            return len(self.ranges) - 1
        return 0

    def device_of(self, name: str) -> torch.device:
        return self.devices[self.part_of(name)]

    @property
    def spans_devices(self) -> bool:
        """Whether the model really lives on more than one device (["cpu", "cpu"] does not)."""
        return len(set(self.devices)) > 1


def _tensor_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    # Floating tensors count in the dtype they will be loaded as (a meta model may still be
    # fp32); the quantized int8 words count as they are.
    size = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
    return tensor.numel() * size


def plan(
    model: ChatGLM2Model, devices: Sequence[str | torch.device], dtype: torch.dtype
) -> DeviceMap:
    """The device map for `model` (on the meta device, in its final layout) over `devices`."""
    parsed = parse_devices(devices)
    layers = model.config.num_layers
    per_layer = [0] * layers
    first = last = 0
    for name, tensor in model.state_dict().items():
        size = _tensor_bytes(tensor, dtype)
        if name.startswith(LAYER_PREFIX):
            per_layer[int(name[len(LAYER_PREFIX) :].split(".", 1)[0])] += size
        elif name.startswith(LAST_DEVICE):
            last += size
        else:
            first += size
    return DeviceMap(parsed, tuple(balance(per_layer, first, last, len(parsed))))


def _parts(model: ChatGLM2Model, device_map: DeviceMap) -> list[tuple[nn.Module, torch.device]]:
    """Each top-level piece of the model with the device it belongs on."""
    transformer = model.transformer
    first, last = device_map.devices[0], device_map.devices[-1]
    pieces: list[tuple[nn.Module, torch.device]] = [(transformer.embedding, first)]
    if transformer.prefix_encoder is not None:
        pieces.append((transformer.prefix_encoder, first))
    for index, layer in enumerate(transformer.encoder.layers):
        pieces.append((layer, device_map.layer_device(index)))
    pieces += [(transformer.encoder.final_layernorm, last), (transformer.output_layer, last)]
    return pieces


def materialize(model: ChatGLM2Model, device_map: DeviceMap) -> None:
    """Allocate a meta model's (uninitialised) tensors piece by piece on their devices, so that
    no device ever holds more than its own range."""
    for module, device in _parts(model, device_map):
        module.to_empty(device=device)
    model.transformer.reset_rope(device_map.devices[0])


def memory_by_part(model: ChatGLM2Model, device_map: DeviceMap) -> list[int]:
    """Bytes of parameters and buffers (KV caches included, once set up) of each range."""
    sizes = [0] * len(device_map.ranges)
    for name, tensor in model.state_dict(keep_vars=True).items():
        sizes[device_map.part_of(name)] += tensor.numel() * tensor.element_size()
    for index, layer in enumerate(model.transformer.encoder.blocks()):
        cache = layer.self_attention.kv_cache
        if cache is not None:  # non-persistent buffers: not in the state dict
            part = device_map.part_of(f"{LAYER_PREFIX}{index}.")
            sizes[part] += 2 * cache.k_cache.numel() * cache.k_cache.element_size()
    return sizes


def memory_by_device(model: ChatGLM2Model, device_map: DeviceMap) -> dict[str, int]:
    """Bytes held on each distinct device (ranges sharing a device summed)."""
    totals: dict[str, int] = {}
    for device, size in zip(device_map.devices, memory_by_part(model, device_map), strict=True):
        totals[str(device)] = totals.get(str(device), 0) + size
    return totals


def log_split(model: ChatGLM2Model, device_map: DeviceMap) -> None:
    """One line at load: which layers went where and how many bytes each range holds."""
    sizes = memory_by_part(model, device_map)
    parts = [
        f"{device} layers {layers.start}-{layers.stop - 1} ({size / 2**30:.2f} GiB)"
        for device, layers, size in zip(device_map.devices, device_map.ranges, sizes, strict=True)
    ]
    log.info("ChatGLM2 split over %d devices: %s", len(parts), "; ".join(parts))
    if device_map.spans_devices:
        log.info(
            "ChatGLM2 on several devices: the batching engine runs it without CUDA graphs, "
            "single-stream generate() runs the eager model (model.py)"
        )
