"""The ChatGLM2 forward pass: golden data from the original code, a naive re-implementation,
and the KV cache against a full forward."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from naive_chatglm import naive_hidden, randomize

from kbqa.chatglm import ChatGLM2, ChatGLM2Config

REFERENCE = Path(__file__).parent.parent / "data" / "chatglm2_tiny_reference.bin"
REFERENCE_CONFIG = {
    "num_layers": 1,
    "hidden_size": 32,
    "num_attention_heads": 8,
    "kv_channels": 4,
    "multi_query_group_num": 2,
    "ffn_hidden_size": 48,
    "padded_vocab_size": 5,
    "seq_length": 16,
}
# Checkpoint keys (without "transformer.") and shapes, in the order the original implementation's
# tiny checkpoint wrote them into tests/data/chatglm2_tiny_reference.bin (with its outputs).
REFERENCE_WEIGHTS = [
    ("embedding.word_embeddings.weight", (5, 32)),
    ("encoder.layers.0.input_layernorm.weight", (32,)),
    ("encoder.layers.0.self_attention.query_key_value.weight", (48, 32)),
    ("encoder.layers.0.self_attention.query_key_value.bias", (48,)),
    ("encoder.layers.0.self_attention.dense.weight", (32, 32)),
    ("encoder.layers.0.post_attention_layernorm.weight", (32,)),
    ("encoder.layers.0.mlp.dense_h_to_4h.weight", (96, 32)),
    ("encoder.layers.0.mlp.dense_4h_to_h.weight", (32, 48)),
    ("encoder.final_layernorm.weight", (32,)),
]
# A config where rotary has several pairs per head and 4 query heads share each KV group.
WIDE_CONFIG = {
    "num_layers": 2,
    "hidden_size": 48,
    "num_attention_heads": 8,
    "kv_channels": 16,
    "multi_query_group_num": 2,
    "ffn_hidden_size": 40,
    "padded_vocab_size": 50,
    "seq_length": 64,
}


def _read_reference() -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    data = REFERENCE.read_bytes()
    assert len(data) == 30548
    offset = 0

    def take(shape: tuple[int, ...], fmt: str, dtype: torch.dtype) -> torch.Tensor:
        nonlocal offset
        count = 1
        for dim in shape:
            count *= dim
        values = struct.unpack_from(f"<{count}{fmt}", data, offset)
        offset += 4 * count
        return torch.tensor(values, dtype=dtype).reshape(shape)

    weights = {
        "transformer." + name: take(shape, "f", torch.float32) for name, shape in REFERENCE_WEIGHTS
    }
    steps = []
    for seq in (3, 1, 1):
        ids = take((1, seq), "i", torch.long)
        hidden = take((seq, 1, 32), "f", torch.float32)
        steps.append((ids, hidden.transpose(0, 1)))  # [seq, batch, hidden] → [batch, seq, hidden]
    assert offset == len(data)
    return weights, steps


@pytest.fixture(scope="module")
def reference_model() -> tuple[ChatGLM2, list[tuple[torch.Tensor, torch.Tensor]]]:
    weights, steps = _read_reference()
    model = ChatGLM2.from_config(REFERENCE_CONFIG)
    model.load_state_dict(weights, strict=False)  # the file has no output_layer
    return model, steps


def test_cached_steps_match_the_original_implementation(
    reference_model: tuple[ChatGLM2, list[tuple[torch.Tensor, torch.Tensor]]],
) -> None:
    model, steps = reference_model
    model.setup_caches(1, 8)
    pos = 0
    for ids, expected in steps:
        seq = ids.shape[1]
        hidden = model.transformer(ids, torch.arange(pos, pos + seq))
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=0)
        pos += seq


def test_full_forward_matches_the_original_implementation(
    reference_model: tuple[ChatGLM2, list[tuple[torch.Tensor, torch.Tensor]]],
) -> None:
    model, steps = reference_model
    ids = torch.cat([ids for ids, _ in steps], dim=1)  # [[0, 1, 2, 3, 4]]
    expected = torch.cat([hidden for _, hidden in steps], dim=1)
    torch.testing.assert_close(model.transformer(ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope_ratio", [1.0, 4.0])
def test_rotary_layout_and_kv_groups_match_a_naive_implementation(rope_ratio: float) -> None:
    model = ChatGLM2.from_config({**WIDE_CONFIG, "rope_ratio": rope_ratio})
    randomize(model, seed=1)
    ids = [3, 17, 42, 8, 8, 29, 0]
    expected = naive_hidden(model.state_dict(), model.config, ids).float()  # [S, hidden]
    full = model.transformer(torch.tensor([ids]))[0]
    torch.testing.assert_close(full, expected, atol=1e-4, rtol=1e-4)

    model.setup_caches(1, 16)
    prefill = model.transformer(torch.tensor([ids[:4]]), torch.arange(4))[0]
    steps = [
        model.transformer(torch.tensor([[t]]), torch.tensor([i]))[0]
        for i, t in enumerate(ids)
        if i >= 4
    ]
    cached = torch.cat([prefill, *steps])
    torch.testing.assert_close(cached, expected, atol=1e-4, rtol=1e-4)


def test_cached_prefill_and_decode_equal_a_full_forward() -> None:
    torch.manual_seed(0)
    model = ChatGLM2.from_config("tiny")
    ids = torch.randint(0, model.config.padded_vocab_size, (2, 9))  # [B, S]
    full = model(ids)  # [B, S, V]
    model.setup_caches(max_batch_size=2, max_seq_length=32)
    logits = [model(ids[:, :6], torch.arange(6))]
    for pos in range(6, 9):
        logits.append(model(ids[:, pos : pos + 1], torch.tensor([pos])))
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=1e-5, rtol=1e-5)

    # A smaller batch reuses the cache; the last-token option gives the last row only.
    last = model(ids[:1, :6], torch.arange(6), last_logits_only=True)
    assert last.shape == (1, 1, model.config.padded_vocab_size)
    torch.testing.assert_close(last[0, 0], full[0, 5], atol=1e-5, rtol=1e-5)


def test_presets_and_config_json_keys() -> None:
    big = ChatGLM2Config.from_name("chatglm2-6b")
    assert (big.num_layers, big.hidden_size, big.num_attention_heads) == (28, 4096, 32)
    assert (big.kv_channels, big.multi_query_group_num, big.ffn_hidden_size) == (128, 2, 13696)
    assert (big.padded_vocab_size, big.seq_length, big.qkv_size) == (65024, 32768, 4608)
    tiny = ChatGLM2Config.from_name("tiny")
    assert tiny.padded_vocab_size == 65024 and tiny.kv_channels >= 8
    config = ChatGLM2Config.from_dict(
        {**REFERENCE_CONFIG, "auto_map": {"AutoModel": "x"}, "torch_dtype": "float16"}
    )
    assert config.hidden_size == 32 and config.rope_ratio == 1 and config.pre_seq_len is None
    assert ChatGLM2Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="preset"):
        ChatGLM2Config.from_name("chatglm3")
    with pytest.raises(ValueError, match="multiple"):
        ChatGLM2Config(num_attention_heads=6, multi_query_group_num=4)


def test_the_6b_preset_has_the_published_parameter_count() -> None:
    model = ChatGLM2.from_config("chatglm2-6b", device="meta", dtype=torch.float16)
    assert sum(p.numel() for p in model.parameters()) == 6_243_584_000
    assert model.dtype == torch.float16


def test_shapes_and_limits() -> None:
    model = ChatGLM2.from_config("tiny")
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 65024)
    with pytest.raises(ValueError, match="seq_length"):
        model.setup_caches(1, model.config.seq_length + 1)
    with pytest.raises(AssertionError, match="setup_caches"):
        model(torch.tensor([[1]]), torch.tensor([0]))
