"""Generation over the KV cache: greedy, sampling filters, seeds, stopping and cancellation."""

from __future__ import annotations

import threading

import pytest
import torch

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.sampling import SamplingParams, sample_rows

# The tiny preset's shape with a small vocabulary, for speed.
SMALL = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
         "ffn_hidden_size": 128, "padded_vocab_size": 300}  # fmt: skip
PROMPT = [64790, 64792, 11, 200, 37]  # [gMASK] sop ...: for the tiny preset's full vocabulary
PROMPT_SMALL = [1, 250, 11, 200, 37]


@pytest.fixture(scope="module")
def model() -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config(SMALL)


def _greedy_by_full_forward(model: ChatGLM2, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_equals_argmax_of_full_forwards(model: ChatGLM2) -> None:
    expected = _greedy_by_full_forward(model, PROMPT_SMALL, 12)
    got = list(model.generate(PROMPT_SMALL, max_new_tokens=12, temperature=0, eos_token_ids=[]))
    assert got == expected
    as_tensor = model.generate(
        torch.tensor(PROMPT_SMALL), max_new_tokens=12, temperature=0, eos_token_ids=[]
    )
    assert list(as_tensor) == expected
    assert all(isinstance(t, int) for t in got)


def test_greedy_on_the_tiny_preset_with_chatglm_special_ids() -> None:
    torch.manual_seed(1)
    tiny = ChatGLM2.from_config("tiny")
    expected = _greedy_by_full_forward(tiny, PROMPT, 5)
    assert (
        list(tiny.generate(PROMPT, max_new_tokens=5, temperature=0, eos_token_ids=[])) == expected
    )


def test_sampling_is_reproducible_with_a_seed(model: ChatGLM2) -> None:
    def run(seed: int) -> list[int]:
        return list(
            model.generate(
                PROMPT_SMALL,
                max_new_tokens=20,
                temperature=1.0,
                top_p=1.0,
                seed=seed,
                eos_token_ids=[],
            )
        )

    first = run(7)
    assert first == run(7)
    assert len(first) == 20
    assert first != run(8)


def test_eos_stops_without_being_yielded(model: ChatGLM2) -> None:
    greedy = _greedy_by_full_forward(model, PROMPT_SMALL, 6)
    eos = greedy[3]
    cut = greedy.index(eos)
    assert (
        list(model.generate(PROMPT_SMALL, max_new_tokens=6, temperature=0, eos_token_ids=[eos]))
        == greedy[:cut]
    )


def test_stop_callable_and_cancellation(model: ChatGLM2) -> None:
    greedy = _greedy_by_full_forward(model, PROMPT_SMALL, 10)
    kwargs = {"max_new_tokens": 10, "temperature": 0.0, "eos_token_ids": []}
    got = list(model.generate(PROMPT_SMALL, stop=lambda ids: len(ids) == 4, **kwargs))  # type: ignore[arg-type]
    assert got == greedy[:4]

    event = threading.Event()
    out = []
    for token in model.generate(PROMPT_SMALL, cancel=event, **kwargs):  # type: ignore[arg-type]
        out.append(token)
        if len(out) == 3:
            event.set()
    assert out == greedy[:3]
    assert list(model.generate(PROMPT_SMALL, cancel=lambda: True, **kwargs)) == []  # type: ignore[arg-type]


def test_max_new_tokens_and_seq_length_cap() -> None:
    torch.manual_seed(2)
    short = ChatGLM2.from_config({**SMALL, "num_layers": 1, "seq_length": 8})
    assert (
        len(list(short.generate([1, 2, 3], max_new_tokens=2, temperature=0, eos_token_ids=[]))) == 2
    )
    assert (
        len(list(short.generate([1, 2, 3], max_new_tokens=100, temperature=0, eos_token_ids=[])))
        == 5
    )
    with pytest.raises(ValueError, match="no room"):
        short.generate(list(range(8)))
    with pytest.raises(ValueError, match="non-empty"):
        short.generate([])
    with pytest.raises(ValueError, match="token ids"):
        short.generate([300])
    with pytest.raises(ValueError, match="top_p"):
        short.generate([1], top_p=0)


def test_a_second_generation_ends_the_first(model: ChatGLM2) -> None:
    first = model.generate(PROMPT_SMALL, max_new_tokens=5, temperature=0, eos_token_ids=[])
    next(first)
    second = list(model.generate([3, 4], max_new_tokens=3, temperature=0, eos_token_ids=[]))
    assert len(second) == 3
    with pytest.raises(RuntimeError, match="another generation"):
        next(first)


def _draws(logits: torch.Tensor, **options: float) -> set[int]:
    seen = torch.zeros(logits.numel(), dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(**{"temperature": 1.0, **options})  # type: ignore[arg-type]
    return {int(sample_rows(logits[None], [params], seen[None], [gen])[0]) for _ in range(400)}


def test_top_k_and_top_p_limit_the_candidates() -> None:
    probs = torch.tensor([0.05, 0.4, 0.02, 0.25, 0.2, 0.08])
    logits = probs.log()
    assert _draws(logits) == set(range(6))
    assert _draws(logits, top_k=3) == {1, 3, 4}
    assert _draws(logits, top_k=1) == {1}
    # Cumulative 0.4, 0.65, 0.85, ...: top_p 0.6 needs the first two, 0.7 the first three.
    assert _draws(logits, top_p=0.6) == {1, 3}
    assert _draws(logits, top_p=0.7) == {1, 3, 4}
    assert _draws(logits, top_p=0.01) == {1}
    assert _draws(logits, temperature=0) == {1}


def test_repetition_penalty_pushes_seen_tokens_down() -> None:
    logits = torch.tensor([2.0, 1.5, -1.0, -1.2])
    seen = torch.tensor([True, False, True, False])
    params = [SamplingParams(repetition_penalty=1.5)]
    pick = sample_rows(logits[None], params, seen[None], [None])
    assert int(pick[0]) == 1  # 2.0 / 1.5 < 1.5
    pick = sample_rows(torch.tensor([[-1.0, -1.2]]), params, torch.tensor([[True, False]]), [None])
    assert int(pick[0]) == 1  # -1.0 * 1.5 < -1.2
