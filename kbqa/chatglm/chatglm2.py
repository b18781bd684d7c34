"""ChatGLM2: the model of model.py with its loaders (load.py) and `generate` (generate.py).

The package's public class sits above everything it uses, so that the model, the loaders and
the generation engines import one way only (model at the bottom).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kbqa.chatglm.config import ChatGLM2Config
from kbqa.chatglm.generate import generate as _generate
from kbqa.chatglm.load import build_random, load_pretrained
from kbqa.chatglm.model import ChatGLM2Model


class ChatGLM2(ChatGLM2Model):
    # One signature, defined in generate.py: the model as `self`, then the options.
    generate = _generate

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        ptuning_checkpoint: str | Path | None = None,
    ) -> ChatGLM2:
        """Load a Hugging Face checkpoint folder (see load.py for the layouts)."""
        return load_pretrained(cls, path, device, dtype, quantize, ptuning_checkpoint)

    @classmethod
    def from_config(
        cls,
        config: ChatGLM2Config | dict[str, Any] | str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
    ) -> ChatGLM2:
        """A randomly initialised model from a config, a config.json dict or a preset name."""
        return build_random(cls, config, device, dtype, quantize)
