"""The layer split (devices=[…]): ranges balanced by bytes, and a model split over ["cpu",
"cpu"] computing exactly what the unsplit one does, from a checkpoint and from a config."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.devices import DeviceMap, balance, parse_devices
from kbqa.chatglm.load import save_pretrained

SPLIT = {**ChatGLM2.from_config("tiny").config.to_dict(), "num_layers": 4, "padded_vocab_size": 256}
PROMPT = torch.tensor([[5, 9, 200, 3, 77, 12]])

# chatglm2-6b in fp16: a layer is 2 × (4,096 × 4,608 + 4,096² + 4,096 × 27,392 + 13,696 ×
# 4,096) bytes plus its two norms and the QKV bias; the embedding and the output layer are
# each 65,024 × 4,096 × 2 bytes.
LAYER = 2 * (4096 * 4608 + 4096 * 4096 + 4096 * 27392 + 13696 * 4096) + 2 * (2 * 4096 + 4608)
TABLE = 65024 * 4096 * 2


def _sizes(ranges: list[range], first: int, last: int) -> list[int]:
    sizes = [len(r) * LAYER for r in ranges]
    sizes[0] += first
    sizes[-1] += last
    return sizes


def test_balance_of_chatglm2_6b_over_two_and_three_devices() -> None:
    two = balance([LAYER] * 28, TABLE, TABLE + 2 * 4096, 2)
    # Both ends carry one table: 14 layers each.
    assert two == [range(0, 14), range(14, 28)]
    three = balance([LAYER] * 28, TABLE, TABLE, 3)
    assert [r.start for r in three] == [0, 9, 19] and three[-1].stop == 28
    # The best split: the largest part is no larger than any other contiguous split's.
    largest = max(_sizes(three, TABLE, TABLE))
    for a in range(1, 27):
        for b in range(a + 1, 28):
            other = [range(0, a), range(a, b), range(b, 28)]
            assert largest <= max(_sizes(other, TABLE, TABLE))
    # An int4 model: layers are a quarter of fp16's, so the float tables weigh more.
    int4 = balance([LAYER // 4] * 28, TABLE, TABLE, 2)
    assert int4 == [range(0, 14), range(14, 28)]
    lopsided = balance([LAYER // 4] * 28, 3 * TABLE, 0, 2)
    assert len(lopsided[0]) < len(lopsided[1])
    assert [r.stop - r.start for r in balance([1, 1, 1], 0, 0, 3)] == [1, 1, 1]


def test_balance_and_devices_refuse_what_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="cannot split 2 layers over 3 devices"):
        balance([1, 1], 0, 0, 3)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        parse_devices(["cpu", "gpu0"])
    with pytest.raises(ValueError, match="at least one"):
        parse_devices([])
    with pytest.raises(ValueError, match="not both"):
        ChatGLM2.from_config("tiny", device="cpu", devices=["cpu", "cpu"])
    with pytest.raises(ValueError, match="cannot split 2 layers over 3 devices"):
        ChatGLM2.from_config("tiny", devices=["cpu"] * 3)


def _same_logits(split: ChatGLM2, whole: ChatGLM2) -> None:
    """Prefill and three decode steps through the KV cache, exactly equal; also a full
    forward without the cache."""
    assert torch.equal(split(PROMPT), whole(PROMPT))
    for model in (split, whole):
        model.setup_caches(1, 16)
    positions = torch.arange(PROMPT.shape[1])
    assert torch.equal(split(PROMPT, positions), whole(PROMPT, positions))
    token = PROMPT[:, -1:]
    for pos in range(PROMPT.shape[1], PROMPT.shape[1] + 3):
        got = split(token, torch.tensor([pos]))
        assert torch.equal(got, whole(token, torch.tensor([pos])))
        token = got[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    prompt = PROMPT[0].tolist()
    greedy = {"max_new_tokens": 8, "temperature": 0, "eos_token_ids": []}
    assert list(split.generate(prompt, **greedy)) == list(whole.generate(prompt, **greedy))


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_split_checkpoint_equals_the_unsplit_model(
    tmp_path: Path, quantize: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    # An fp16 checkpoint (the chatglm2-6b layout), loaded as fp32 on the CPU; int4 quantizes
    # it while loading.
    save_pretrained(ChatGLM2.from_config(SPLIT).to(torch.float16), tmp_path)
    whole = ChatGLM2.from_pretrained(tmp_path, dtype=torch.float32, quantize=quantize)
    with caplog.at_level(logging.INFO, logger="kbqa.chatglm.devices"):
        split = ChatGLM2.from_pretrained(
            tmp_path, dtype=torch.float32, quantize=quantize, devices=["cpu", "cpu"]
        )
    assert whole.device_map is None
    assert split.device_map == DeviceMap((torch.device("cpu"),) * 2, (range(0, 2), range(2, 4)))
    assert "split over 2 devices: cpu layers 0-1" in caplog.text
    assert "eager" not in caplog.text  # one real device: the fast engine can take it
    assert split.memory_by_device() == whole.memory_by_device()
    _same_logits(split, whole)
    # The KV cache counts with its layers once set up.
    assert split.memory_by_device()["cpu"] > sum(
        t.numel() * t.element_size() for t in split.state_dict().values()
    )


@pytest.mark.parametrize(
    ("quantize", "prefix"),
    [(None, None), ("int4", None), (None, 4)],
    ids=["fp32", "int4", "prefix"],
)
def test_split_random_model_equals_the_unsplit_one(
    quantize: str | None, prefix: int | None
) -> None:
    # With a P-tuning prefix: its encoder sits on the first device, each layer's keys/values
    # go to that layer's device (and its cache).
    config = {**SPLIT, "pre_seq_len": prefix}
    torch.manual_seed(1)
    whole = ChatGLM2.from_config(config, quantize=quantize)
    torch.manual_seed(1)
    split = ChatGLM2.from_config(config, quantize=quantize, devices=["cpu", "cpu", "cpu"])
    assert split.device_map is not None and len(split.device_map.ranges) == 3
    state = whole.state_dict()
    assert all(torch.equal(t, state[name]) for name, t in split.state_dict().items())
    _same_logits(split, whole)


@pytest.mark.parametrize("prefix", [None, 4], ids=["plain", "prefix"])
def test_the_batching_engine_over_a_split_model_gives_the_unsplit_tokens(
    prefix: int | None,
) -> None:
    """Each layer's rows of the engine's KV cache on its own range's device, a P-tuning prefix
    in every range's rows; two rows for three requests (one waits, a row is copied into
    another), prompts cut into 5-token prefill chunks."""
    config = {**SPLIT, "pre_seq_len": prefix}
    prompts = [[5, 9, 200, 3, 77, 12, 8], [40, 41], [7, 6, 5, 4, 3, 2, 1, 9, 8, 7, 6]]

    def tokens(devices: list[str] | None) -> tuple[list[list[int]], BatchEngine]:
        torch.manual_seed(3)
        model = ChatGLM2.from_config(config, dtype=torch.float64, devices=devices)
        with BatchEngine(model, max_batch=2, max_seq=40, prefill_chunk=5) as engine:
            # The first ends first: the second's row moves into row 0, the third takes row 1.
            jobs = zip(prompts, [3, 8, 6], strict=True)
            requests = [engine.submit(p, max_new_tokens=n, stop_ids=[]) for p, n in jobs]
            return [r.result(timeout=60) for r in requests], engine

    want, _ = tokens(None)
    got, engine = tokens(["cpu", "cpu", "cpu"])
    assert got == want
    ranges = [layers for _, layers in engine.model.layer_split]
    assert len(ranges) == 3 and [layers for layers, _, _ in engine.cache.ranges] == ranges
    assert engine.stats.max_running == 2


def test_device_map_over_two_cards() -> None:
    """What goes where over two real devices (a map built by hand: no second device here), and
    the check generate() makes to run such a model eagerly."""
    model = ChatGLM2.from_config("tiny", devices=["cpu", "cpu"])
    assert model.device_map is not None and not model.device_map.spans_devices
    two_cards = DeviceMap((torch.device("cuda:0"), torch.device("cuda:1")), (range(1), range(1, 2)))
    assert two_cards.spans_devices
    assert two_cards.device_of("transformer.embedding.word_embeddings.weight").index == 0
    assert two_cards.device_of("transformer.encoder.layers.1.mlp.dense_4h_to_h.weight").index == 1
    assert two_cards.device_of("transformer.output_layer.weight").index == 1
    assert two_cards.device_of("transformer.encoder.final_layernorm.weight").index == 1


def test_devices_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbqa.llm.factory import generation_concurrency
    from kbqa.settings import SettingsError, load_settings

    monkeypatch.setenv("KBQA_LLM__CHATGLM2__DEVICES", "cuda:0, cuda:1")
    settings = load_settings(tmp_path, overrides={"llm": {"backend": "chatglm2"}})
    assert settings.llm.chatglm2.devices == ["cuda:0", "cuda:1"]
    # The batching engine takes a split model: max_batch generations at once.
    assert generation_concurrency(settings) == settings.llm.chatglm2.max_batch
    off = {"llm": {"backend": "chatglm2", "chatglm2": {"batching": False}}}
    assert generation_concurrency(load_settings(tmp_path, overrides=off)) == 1
    monkeypatch.setenv("KBQA_LLM__CHATGLM2__DEVICES", "cuda:0,gpu1")
    with pytest.raises(SettingsError, match=r"llm\.chatglm2\.devices.*unknown device 'gpu1'"):
        load_settings(tmp_path)


def test_chat_model_from_settings_with_devices(
    tmp_path: Path,
    sp_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kbqa.llm.chatglm2 import ChatGLM2Chat
    from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
    from kbqa.llm.errors import LLMUnavailable
    from kbqa.settings import ChatGLM2Settings, LLMSettings

    torch.manual_seed(2)
    save_pretrained(ChatGLM2.from_config("tiny"), tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    llm = LLMSettings(max_new_tokens=6, temperature=0.0, context_tokens=512)
    whole = ChatGLM2Chat.from_settings(
        ChatGLM2Settings(path=str(tmp_path), dtype="fp32", device="cpu"), llm
    )
    split_settings = ChatGLM2Settings(path=str(tmp_path), dtype="fp32", devices=["cpu", "cpu"])
    split = ChatGLM2Chat.from_settings(split_settings, llm)
    assert split.chatglm.device_map is not None and whole.chatglm.device_map is None
    assert split.invoke("Hello").content == whole.invoke("Hello").content
    # What the server runs: the batching engine over the split model, its cache by device.
    with caplog.at_level(logging.INFO, logger="kbqa.llm"):
        batched = BatchedChatGLM2Chat.from_settings(split_settings, llm)
    assert "KV cache by device: cpu " in caplog.text
    try:
        assert batched.invoke("Hello").content == whole.invoke("Hello").content
    finally:
        batched.close()
    # A listed CUDA device is checked, before loading, like `device` is.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpus = ChatGLM2Settings(path=str(tmp_path), dtype="fp32", devices=["cpu", "cuda:1"])
    with pytest.raises(LLMUnavailable, match=r"CUDA is not available.*cuda:1"):
        ChatGLM2Chat.from_settings(gpus, llm)
