"""ChatGLM2: the model of model.py with its loaders (load.py) and `generate` (generate.py).

The package's public class sits above everything it uses, so that the model, the loaders and
the generation engines import one way only (model at the bottom).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from kbqa.chatglm.config import ChatGLM2Config
from kbqa.chatglm.devices import DeviceMap, memory_by_device
from kbqa.chatglm.generate import generate as _generate
from kbqa.chatglm.load import build_random, load_pretrained
from kbqa.chatglm.model import ChatGLM2Model


def _one_or_many(
    device: str | torch.device | None, devices: Sequence[str | torch.device] | None
) -> str | torch.device:
    if device is not None and devices is not None:
        raise ValueError("give device= (one device) or devices= (a layer split), not both")
    if devices is not None and not devices:
        raise ValueError("devices= must list at least one device")
    return "cpu" if device is None else device


class ChatGLM2(ChatGLM2Model):
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        ptuning_checkpoint: str | Path | None = None,
        devices: Sequence[str | torch.device] | None = None,
    ) -> ChatGLM2:
        """Load a Hugging Face checkpoint folder (see load.py for the layouts). device: the one
        device (default cpu); devices: split the layers over these instead (devices.py)."""
        one = _one_or_many(device, devices)
        return load_pretrained(cls, path, one, dtype, quantize, ptuning_checkpoint, devices)

    @classmethod
    def from_config(
        cls,
        config: ChatGLM2Config | dict[str, Any] | str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        devices: Sequence[str | torch.device] | None = None,
    ) -> ChatGLM2:
        """A randomly initialised model from a config, a config.json dict or a preset name;
        device / devices as in from_pretrained."""
        return build_random(cls, config, _one_or_many(device, devices), dtype, quantize, devices)

    @property
    def device_map(self) -> DeviceMap | None:
        """Which layers sit on which device, for a model loaded with devices=[…]; else None."""
        return DeviceMap.of(self)

    def memory_by_device(self) -> dict[str, int]:
        """Bytes of weights and KV cache on each device ({device: bytes})."""
        device_map = self.device_map
        if device_map is None:
            device_map = DeviceMap((self.device,), (range(self.config.num_layers),))
        return memory_by_device(self, device_map)

    def generate(self, input_ids: Sequence[int] | torch.Tensor, **options: Any) -> Iterator[int]:
        """generate.py's generate (its options); a model split over several devices runs the
        eager model, the fast engine taking one device (logged when the model was loaded)."""
        device_map = self.device_map
        if device_map is not None and device_map.spans_devices:
            options["fast"] = False
        return _generate(self, input_ids, **options)
