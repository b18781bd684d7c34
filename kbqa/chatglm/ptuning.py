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

import torch

from kbqa.chatglm.checkpoint import (
    BIN_SINGLE,
    CheckpointError,
    read_config,
    read_tensors,
    write_config,
)
from kbqa.chatglm.model import ChatGLM2Model, PrefixEncoder

PREFIX = "transformer.prefix_encoder."


def load_ptuning(model: ChatGLM2Model, path: str | Path) -> None:
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


def save_ptuning(model: ChatGLM2Model, path: str | Path) -> None:
    """Write model's prefix encoder as the official fine-tuning scripts do."""
    encoder = model.transformer.prefix_encoder
    if encoder is None:
        raise ValueError("model has no prefix encoder")
    folder = Path(path)
    write_config(folder, model.config.to_dict())
    state = {PREFIX + k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    torch.save(state, folder / BIN_SINGLE)
