"""P-tuning v2: learned per-layer prefix keys/values, in the official fine-tuning layout.

A P-tuning checkpoint is a folder with config.json (pre_seq_len, prefix_projection) and
pytorch_model.bin holding `transformer.prefix_encoder.*`. The encoder maps prefix index
0..P-1 to one row of width num_layers * 2 * groups * kv_channels, read as
[P, num_layers * 2, groups, kv_channels]: row 2i gives layer i's keys, row 2i+1 its values.
The attention code places them before the prompt's keys/values, unrotated and always visible.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kbqa.chatglm.checkpoint import (
    BIN_SINGLE,
    CheckpointError,
    read_config,
    read_tensors,
    write_config,
)
from kbqa.chatglm.config import ChatGLM2Config

if TYPE_CHECKING:
    from kbqa.chatglm.model import ChatGLM2

PREFIX = "transformer.prefix_encoder."


class PrefixEncoder(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        if not config.pre_seq_len:
            raise ValueError("PrefixEncoder needs config.pre_seq_len")
        self.pre_seq_len = config.pre_seq_len
        self.num_layers = config.num_layers
        self.groups = config.kv_groups
        self.kv_channels = config.kv_channels
        width = config.num_layers * 2 * config.kv_groups * config.kv_channels
        self.embedding = nn.Embedding(config.pre_seq_len, width)
        # Key names trans.0 / trans.2 come from the official nn.Sequential(Linear, Tanh, Linear).
        self.trans: nn.Sequential | None = None
        if config.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(width, config.hidden_size),
                nn.Tanh(),
                nn.Linear(config.hidden_size, width),
            )

    def forward(self) -> Tensor:
        """Prefix keys/values for every layer: [num_layers, 2, groups, P, kv_channels]."""
        rows = self.embedding.weight  # [P, L * 2 * G * D]: index i for prefix position i
        if self.trans is not None:
            rows = self.trans(rows)
        p, n, g, d = self.pre_seq_len, self.num_layers, self.groups, self.kv_channels
        kv = rows.view(p, n * 2, g, d).permute(1, 2, 0, 3)  # [L * 2, G, P, D]
        return kv.reshape(n, 2, g, p, d)  # [L, 2 (key, value), G, P, D]


def load_ptuning(model: ChatGLM2, path: str | Path) -> None:
    """Attach the prefix encoder of a P-tuning v2 checkpoint folder to model (in place)."""
    folder = Path(path)
    raw = read_config(folder)
    pre_seq_len = raw.get("pre_seq_len")
    if not isinstance(pre_seq_len, int) or pre_seq_len <= 0:
        raise CheckpointError(f"{folder / 'config.json'}: P-tuning config has no pre_seq_len")
    weights = folder / BIN_SINGLE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: P-tuning weights not found")
    # As the official loader does, only the prefix encoder is taken from this file.
    state = {
        name.removeprefix(PREFIX): tensor
        for name, tensor in read_tensors(weights).items()
        if name.startswith(PREFIX)
    }

    projection = bool(raw.get("prefix_projection", False))
    config = dataclasses.replace(
        model.config, pre_seq_len=pre_seq_len, prefix_projection=projection
    )
    with torch.device("meta"):
        encoder = PrefixEncoder(config)
    expected = encoder.state_dict()
    if missing := sorted(expected.keys() - state.keys()):
        raise CheckpointError(f"{weights}: missing tensor {PREFIX}{missing[0]}")
    if unexpected := sorted(state.keys() - expected.keys()):
        raise CheckpointError(f"{weights}: unexpected tensor {PREFIX}{unexpected[0]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights}: {PREFIX}{name} has shape {list(tensor.shape)}, "
                f"expected {list(expected[name].shape)}"
            )
        state[name] = tensor.to(device=model.device, dtype=model.dtype)
    encoder.load_state_dict(state, assign=True)
    encoder.eval().requires_grad_(False)
    # The model's config object is shared by its modules: update it in place, once valid.
    model.config.pre_seq_len = pre_seq_len
    model.config.prefix_projection = projection
    model.transformer.prefix_encoder = encoder
    # Existing caches were sized without the prefix: rebuild them with it.
    if model.max_seq_length:
        model.setup_caches(model.max_batch_size, model.max_seq_length)


def save_ptuning(model: ChatGLM2, path: str | Path) -> None:
    """Write model's prefix encoder as the official fine-tuning scripts do."""
    encoder = model.transformer.prefix_encoder
    if encoder is None:
        raise ValueError("model has no prefix encoder")
    folder = Path(path)
    write_config(folder, model.config.to_dict())
    state = {PREFIX + k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    torch.save(state, folder / BIN_SINGLE)
