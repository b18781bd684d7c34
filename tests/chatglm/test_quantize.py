"""INT8/INT4 weight-only quantization: the packed layout, its error, and its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.checkpoint import read_tensors
from kbqa.chatglm.load import CheckpointError, save_pretrained
from kbqa.chatglm.quantize import QuantizedLinear, pack_int4, quantize_weight, unpack_int4

SMALL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
         "ffn_hidden_size": 128, "padded_vocab_size": 300, "seq_length": 256}  # fmt: skip
IDS = torch.tensor([[1, 250, 11, 200, 37, 5, 5, 90], [3, 4, 5, 6, 7, 8, 9, 10]])
QKV = "transformer.encoder.layers.0.self_attention.query_key_value"
SMALL_QKV_OUT = (4 + 2 * 2) * 16  # (heads + 2 * groups) * kv_channels


def _model(**kwargs: object) -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config(SMALL, **kwargs)  # type: ignore[arg-type]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_int4_bytes_hold_the_even_column_in_the_high_nibble() -> None:
    q = torch.tensor([[1, -2, -8, 7, 0, -1]], dtype=torch.int8)
    # 0x1E, 0x87, 0x0F as signed bytes.
    assert pack_int4(q).tolist() == [[0x1E, 0x87 - 256, 0x0F]]
    every = torch.tensor([[a, b] for a in range(-8, 8) for b in range(-8, 8)], dtype=torch.int8)
    every = every.reshape(16, 32)  # all 256 nibble pairs
    assert torch.equal(unpack_int4(pack_int4(every)), every)


@pytest.mark.parametrize("bits", [4, 8])
def test_per_row_symmetric_quantization(bits: int) -> None:
    torch.manual_seed(3)
    weight = torch.randn(6, 10) * torch.tensor([[0.01], [1], [100], [0.5], [2], [0]])
    packed, scale = quantize_weight(weight, bits)
    qmax = 7 if bits == 4 else 127
    assert scale.dtype == torch.float16 and scale.shape == (6,)
    torch.testing.assert_close(scale, (weight.abs().amax(1) / qmax).half())
    q = unpack_int4(packed) if bits == 4 else packed
    assert packed.dtype == torch.int8 and packed.shape == (6, 10 // 2 if bits == 4 else 10)
    expected = torch.round(weight / scale.float().clamp_min(1e-30)[:, None]).clamp(-qmax, qmax)
    assert torch.equal(q.float(), expected)
    error = (q.float() * scale.float()[:, None] - weight).abs()
    assert bool((error <= scale.float()[:, None] * 0.5 + 1e-6).all())


def test_quantized_logits_stay_close_to_float32() -> None:
    reference = _model()(IDS)
    errors = {}
    for mode in ("int8", "int4"):
        quantized = _model(quantize=mode)
        assert quantized.config.quantization_bit == int(mode[3:])
        logits = quantized(IDS)
        errors[mode] = _relative_error(logits, reference)
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        assert agree >= (0.9 if mode == "int8" else 0.5), mode
    # Measured 0.010 and 0.18 on this model; the int4 step is max|w| / 7.
    assert errors["int8"] < 0.03
    assert errors["int4"] < 0.3
    assert errors["int8"] < errors["int4"] / 5


def test_int4_storage_is_packed() -> None:
    layer = _model(quantize="int4").get_submodule(QKV)
    assert isinstance(layer, QuantizedLinear)
    assert layer.weight.dtype == torch.int8
    assert layer.weight.untyped_storage().nbytes() == layer.out_features * layer.in_features // 2


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_official_quantized_layout_round_trip(tmp_path: Path, mode: str) -> None:
    model = _model(dtype=torch.float16, quantize=mode)
    save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    bits = int(mode[3:])
    assert config["quantization_bit"] == bits and config["torch_dtype"] == "float16"
    tensors = read_tensors(tmp_path / "pytorch_model.bin")
    columns = 64 // 2 if bits == 4 else 64
    assert tensors[f"{QKV}.weight"].dtype == torch.int8
    assert tensors[f"{QKV}.weight"].shape == (SMALL_QKV_OUT, columns)
    assert tensors[f"{QKV}.weight_scale"].dtype == torch.float16
    assert tensors[f"{QKV}.weight_scale"].shape == (SMALL_QKV_OUT,)
    ints = {k for k, v in tensors.items() if v.dtype == torch.int8}
    assert len(ints) == 2 * 4  # the four linears of each of the two layers
    assert all(v.dtype == torch.float16 for k, v in tensors.items() if k not in ints)

    same = ChatGLM2.from_pretrained(tmp_path, dtype=torch.float16)
    torch.testing.assert_close(same(IDS), model(IDS), atol=0, rtol=0)
    wider = ChatGLM2.from_pretrained(tmp_path, dtype=torch.float32)
    assert wider.get_submodule(f"{QKV}").weight_scale.dtype == torch.float16
    torch.testing.assert_close(wider(IDS), model(IDS).float(), atol=0.05, rtol=0.01)


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_quantize_a_float_checkpoint_on_load(tmp_path: Path, mode: str) -> None:
    model = _model()
    save_pretrained(model, tmp_path, format="safetensors", shards=2)
    loaded = ChatGLM2.from_pretrained(tmp_path, quantize=mode)
    assert isinstance(loaded.get_submodule(QKV), QuantizedLinear)
    # The same weights quantized in memory give the same numbers.
    torch.testing.assert_close(loaded(IDS), _model(quantize=mode)(IDS), atol=0, rtol=0)
    tokens = list(loaded.generate([1, 2, 3], max_new_tokens=3, temperature=0, eos_token_ids=[]))
    assert len(tokens) == 3


def test_quantized_checkpoint_mismatches(tmp_path: Path) -> None:
    save_pretrained(_model(quantize="int4"), tmp_path)
    with pytest.raises(ValueError, match="already int4"):
        ChatGLM2.from_pretrained(tmp_path, quantize="int8")
    with pytest.raises(ValueError, match="quantize must be"):
        ChatGLM2.from_pretrained(tmp_path, quantize="int2")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_bit": 0}))
    with pytest.raises(
        CheckpointError, match=r"is quantized \(int8\) but config.json has quantization_bit 0"
    ):
        ChatGLM2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_bit": 8}))
    with pytest.raises(CheckpointError, match=r"has shape \[128, 32\], expected \[128, 64\]"):
        ChatGLM2.from_pretrained(tmp_path)
