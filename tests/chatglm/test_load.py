"""Checkpoint folders in the Hugging Face layouts: round trips and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kbqa.chatglm import ChatGLM2, checkpoint
from kbqa.chatglm.checkpoint import BIN_INDEX, SAFE_INDEX
from kbqa.chatglm.load import CheckpointError, save_pretrained

SMALL = {**ChatGLM2.from_config("tiny").config.to_dict(), "padded_vocab_size": 256}
IDS = torch.tensor([[5, 9, 200, 3, 77]])


@pytest.fixture(scope="module")
def model() -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config(SMALL)


@pytest.fixture(scope="module")
def saved(model: ChatGLM2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    save_pretrained(model, folder, format="bin", shards=3)
    return folder


@pytest.mark.parametrize(
    ("fmt", "shards", "files"),
    [
        ("bin", 1, ["pytorch_model.bin"]),
        ("bin", 3, [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)] + [BIN_INDEX]),
        ("safetensors", 1, ["model.safetensors"]),
        ("safetensors", 2, [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)] + [SAFE_INDEX]),
    ],
)
def test_round_trip(
    model: ChatGLM2, tmp_path: Path, fmt: str, shards: int, files: list[str]
) -> None:
    save_pretrained(model, tmp_path, format=fmt, shards=shards)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, "config.json"])
    if shards > 1:
        index = json.loads((tmp_path / files[-1]).read_text())
        assert set(index["weight_map"]) == set(model.state_dict())
        assert set(index["weight_map"].values()) == set(files[:-1])
        assert index["metadata"]["total_size"] > 0
    loaded = ChatGLM2.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32 and not loaded.training
    torch.testing.assert_close(loaded(IDS), model(IDS), atol=0, rtol=0)
    assert list(loaded.generate([1, 2, 3], max_new_tokens=4, temperature=0)) == list(
        model.generate([1, 2, 3], max_new_tokens=4, temperature=0)
    )


def test_half_precision_and_ignored_rotary_buffer(model: ChatGLM2, tmp_path: Path) -> None:
    # The original checkpoints carry the rotary inv_freq buffer; it is recomputed here.
    state = {k: v.half() for k, v in model.state_dict().items()}
    state["transformer.rotary_pos_emb.inv_freq"] = torch.ones(4)
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = ChatGLM2.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded(IDS).float(), model(IDS), atol=0.15, rtol=0.05)


def test_loading_hands_over_the_mapped_tensors(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: dict[str, torch.Tensor] = {}
    original = checkpoint.read_tensors

    def spy(path: Path) -> dict[str, torch.Tensor]:
        tensors = original(path)
        read.update(tensors)
        return tensors

    monkeypatch.setattr(checkpoint, "read_tensors", spy)
    loaded = ChatGLM2.from_pretrained(saved)
    # float32 in, float32 out on the CPU: the parameters are the memory-mapped tensors
    # themselves, not copies.
    for name, param in loaded.state_dict().items():
        assert param.data_ptr() == read[name].data_ptr(), name


def test_legacy_non_zip_bin_file(model: ChatGLM2, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    torch.save(
        model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False
    )
    torch.testing.assert_close(ChatGLM2.from_pretrained(tmp_path)(IDS), model(IDS))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(exist_ok=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def _error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        ChatGLM2.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder_config_and_weights(saved: Path, tmp_path: Path) -> None:
    assert "folder not found" in _error(tmp_path / "nope")
    assert "config.json not found" in _error(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert "unreadable config.json" in _error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**SMALL, "num_attention_heads": 3}))
    assert "invalid config" in _error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    assert "no weights found" in _error(tmp_path)


def test_missing_shard(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path / "c")
    (folder / "pytorch_model-00002-of-00003.bin").unlink()
    message = _error(folder)
    assert "pytorch_model-00002-of-00003.bin: missing shard" in message


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_truncated_file(model: ChatGLM2, tmp_path: Path, fmt: str) -> None:
    save_pretrained(model, tmp_path, format=fmt)  # type: ignore[arg-type]
    weights = tmp_path / ("pytorch_model.bin" if fmt == "bin" else "model.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = _error(tmp_path)
    assert weights.name in message and "truncated or corrupt" in message


def test_garbage_file(model: ChatGLM2, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"this is not a checkpoint" * 100)
    assert "pytorch_model.bin: truncated or corrupt" in _error(tmp_path)


def test_wrong_shape_missing_and_unexpected_keys(model: ChatGLM2, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    weights = tmp_path / "model.safetensors"
    good = {k: v.clone() for k, v in model.state_dict().items()}
    name = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"

    save_file({**good, name: torch.zeros(64, 127)}, str(weights))
    message = _error(tmp_path)
    assert f"model.safetensors: {name} has shape [64, 127], expected [64, 128]" in message

    save_file({k: v for k, v in good.items() if k != name}, str(weights))
    assert f"lacks 1 tensor(s), first {name}" in _error(tmp_path)

    save_file({**good, "transformer.extra.weight": torch.zeros(2)}, str(weights))
    assert "model.safetensors: unexpected tensor transformer.extra.weight" in _error(tmp_path)

    save_file({**good, name: good[name].to(torch.int32)}, str(weights))
    assert "expected floating point" in _error(tmp_path)
