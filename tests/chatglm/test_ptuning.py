"""P-tuning v2 prefixes: against the naive reference, and in the official checkpoint layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from naive_chatglm import naive_hidden, randomize

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.checkpoint import read_tensors
from kbqa.chatglm.load import CheckpointError, save_pretrained
from kbqa.chatglm.ptuning import save_ptuning

BASE = {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 8, "kv_channels": 16,
        "multi_query_group_num": 2, "ffn_hidden_size": 40, "padded_vocab_size": 50,
        "seq_length": 64}  # fmt: skip
IDS = [3, 17, 42, 8, 8, 29]
WIDTH = 2 * 2 * 2 * 16  # num_layers * 2 * groups * kv_channels


def _tuned(projection: bool, seed: int = 4) -> ChatGLM2:
    model = ChatGLM2.from_config({**BASE, "pre_seq_len": 3, "prefix_projection": projection})
    randomize(model, seed)
    return model


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_matches_the_naive_reference(projection: bool) -> None:
    model = _tuned(projection)
    assert model.transformer.prefix_encoder is not None
    expected = naive_hidden(model.state_dict(), model.config, IDS).float()  # [S, hidden]
    full = model.transformer(torch.tensor([IDS]))[0]
    torch.testing.assert_close(full, expected, atol=1e-4, rtol=1e-4)

    # Cached: the prefix sits in the first cache slots; prompt positions still start at 0.
    model.setup_caches(2, 16)
    batch = torch.tensor([IDS, IDS])
    prefill = model.transformer(batch[:, :4], torch.arange(4))
    steps = [model.transformer(batch[:, i : i + 1], torch.tensor([i])) for i in (4, 5)]
    cached = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(cached[0], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached[1], expected, atol=1e-4, rtol=1e-4)

    # And the prefix changes the answer.
    plain = ChatGLM2.from_config(BASE)
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain.transformer(torch.tensor([IDS]))[0], full, atol=1e-2)


def test_generation_with_a_prefix_uses_it_in_the_cache() -> None:
    model = _tuned(projection=True)
    ids = list(IDS)
    for _ in range(5):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    got = list(model.generate(IDS, max_new_tokens=5, temperature=0, eos_token_ids=[]))
    assert got == ids[len(IDS) :]


@pytest.mark.parametrize("projection", [False, True])
def test_official_checkpoint_round_trip(tmp_path: Path, projection: bool) -> None:
    tuned = _tuned(projection)
    base = ChatGLM2.from_config(BASE)
    base.load_state_dict(tuned.state_dict(), strict=False)  # same weights, no prefix
    save_pretrained(base, tmp_path / "base", format="safetensors")
    save_ptuning(tuned, tmp_path / "ptuning")

    tensors = read_tensors(tmp_path / "ptuning" / "pytorch_model.bin")
    expected_keys = {"transformer.prefix_encoder.embedding.weight"}
    if projection:
        expected_keys |= {
            f"transformer.prefix_encoder.trans.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
        }
    assert set(tensors) == expected_keys
    assert tensors["transformer.prefix_encoder.embedding.weight"].shape == (3, WIDTH)
    config = json.loads((tmp_path / "ptuning" / "config.json").read_text())
    assert (config["pre_seq_len"], config["prefix_projection"]) == (3, projection)

    loaded = ChatGLM2.from_pretrained(tmp_path / "base", ptuning_checkpoint=tmp_path / "ptuning")
    ids = torch.tensor([IDS])
    torch.testing.assert_close(loaded(ids), tuned(ids), atol=0, rtol=0)
    # A model saved whole with its prefix loads without a separate P-tuning folder.
    save_pretrained(tuned, tmp_path / "whole")
    torch.testing.assert_close(ChatGLM2.from_pretrained(tmp_path / "whole")(ids), tuned(ids))


def test_ptuning_errors(tmp_path: Path) -> None:
    base = ChatGLM2.from_config(BASE)
    save_pretrained(base, tmp_path / "base")
    folder = tmp_path / "ptuning"
    save_ptuning(_tuned(projection=False), folder)

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pre_seq_len": None}))
    with pytest.raises(CheckpointError, match="no pre_seq_len"):
        ChatGLM2.from_pretrained(tmp_path / "base", ptuning_checkpoint=folder)

    (folder / "config.json").write_text(json.dumps({**config, "pre_seq_len": 4}))
    with pytest.raises(CheckpointError, match=r"has shape \[3, 128\], expected \[4, 128\]"):
        ChatGLM2.from_pretrained(tmp_path / "base", ptuning_checkpoint=folder)

    (folder / "config.json").write_text(json.dumps({**config, "prefix_projection": True}))
    with pytest.raises(CheckpointError, match=r"missing tensor transformer\.prefix_encoder\.trans"):
        ChatGLM2.from_pretrained(tmp_path / "base", ptuning_checkpoint=folder)

    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="P-tuning weights not found"):
        ChatGLM2.from_pretrained(tmp_path / "base", ptuning_checkpoint=folder)
