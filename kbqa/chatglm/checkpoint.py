"""Reading and writing the Hugging Face checkpoint files, with one-line errors naming the file.

Layouts read (first match wins, as transformers prefers safetensors):
  model.safetensors.index.json + model-0000N-of-0000M.safetensors
  model.safetensors
  pytorch_model.bin.index.json + pytorch_model-0000N-of-0000M.bin
  pytorch_model.bin
Tensors are read lazily, one shard at a time: .bin files are memory-mapped
(`torch.load(mmap=True, weights_only=True)`), so a tensor that needs no dtype or device change
is never copied into RAM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

CONFIG_NAME = "config.json"
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

Format = Literal["bin", "safetensors"]


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be used; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({_one_line(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return data


def read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    return read_json(folder / CONFIG_NAME, "config.json")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, in order; every shard an index names must exist."""
    for index_name, single_name in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index_path = folder / index_name
        if index_path.exists():
            weight_map = read_json(index_path, "index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: index has no weight_map")
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (folder / shard).is_file():
                    raise CheckpointError(
                        f"{folder / shard}: missing shard (named in {index_name})"
                    )
            return [folder / shard for shard in shards]
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise CheckpointError(
        f"{folder}: no weights found (expected {SAFE_SINGLE}, {BIN_SINGLE} or a sharded index)"
    )


def read_tensors(path: Path) -> dict[str, Tensor]:
    """All tensors of one weight file; .bin files stay memory-mapped."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        data = _torch_load(path)
    except Exception as exc:  # torch/zipfile/pickle/safetensors each raise their own types
        raise CheckpointError(f"{path}: truncated or corrupt ({_one_line(exc)})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return data


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        # Files written before torch's zip format (torch < 1.6) cannot be memory-mapped.
        if "mmap can only be used" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def iter_tensors(folder: Path) -> Iterator[tuple[str, Tensor, Path]]:
    """(name, tensor, file) for every tensor of the checkpoint, one shard at a time."""
    for path in weight_files(folder):
        for name, tensor in read_tensors(path).items():
            yield name, tensor, path


def _split(names: list[str], state: dict[str, Tensor], shards: int) -> list[list[str]]:
    """Consecutive groups of roughly equal byte size, none empty."""
    sizes = [state[n].numel() * state[n].element_size() for n in names]
    total = max(sum(sizes), 1)
    groups: list[list[str]] = [[] for _ in range(shards)]
    current = done = 0
    for i, name in enumerate(names):
        by_bytes = min(done * shards // total, shards - 1)
        # Move on when the bytes say so, or when only one tensor per later shard is left.
        if groups[current] and (by_bytes > current or len(names) - i < shards - current):
            current += 1
        groups[current].append(name)
        done += sizes[i]
    return groups


def write_weights(
    folder: Path, state: dict[str, Tensor], format: Format = "bin", shards: int = 1
) -> None:
    """Write state in the Hugging Face layout (single file, or shards plus index json)."""
    if format not in ("bin", "safetensors"):
        raise ValueError(f"format must be 'bin' or 'safetensors', got {format!r}")
    names = list(state)
    if not 1 <= shards <= len(names):
        raise ValueError(f"shards must be between 1 and {len(names)}, got {shards}")
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views and shared storage; clone gives each tensor its own.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}

    def save(part: dict[str, Tensor], name: str) -> None:
        if format == "safetensors":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)

    if shards == 1:
        save(state, SAFE_SINGLE if format == "safetensors" else BIN_SINGLE)
        return
    weight_map: dict[str, str] = {}
    for i, group in enumerate(_split(names, state, shards), start=1):
        if format == "safetensors":
            file_name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        else:
            file_name = f"pytorch_model-{i:05d}-of-{shards:05d}.bin"
        save({k: state[k] for k in group}, file_name)
        weight_map.update(dict.fromkeys(group, file_name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_name = SAFE_INDEX if format == "safetensors" else BIN_INDEX
    (folder / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (folder / CONFIG_NAME).write_text(text, encoding="utf-8")
