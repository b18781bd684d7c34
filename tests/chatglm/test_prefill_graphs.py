"""Whole prompts prefilled padded into the scratch row (what the CUDA graphs replay) give what
the unpadded prefill gives, and an engine that uses them still gives every request exactly its
one-at-a-time tokens. Here the padded pass runs eagerly (capture=False) through the fast
forward's torch ops; on CUDA the same pass is what gets captured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from naive_chatglm import randomize

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.forward import Forward, Segment, SlotCache
from kbqa.chatglm.prefill_graphs import PrefillGraphs

VOCAB = 65024  # the tiny preset's


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config("tiny", dtype=torch.float64)


def _prompts(lengths: list[int], seed: int = 1, vocab: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _alone(model: ChatGLM2, prompt: list[int], max_new: int) -> list[int]:
    tokens = model.generate(prompt, max_new_tokens=max_new, temperature=0.0, eos_token_ids=[])
    return list(tokens)


def _graphed_engine(model: ChatGLM2, **options: int) -> BatchEngine:
    """An engine with whole prompts padded (uncaptured), as its CUDA graphs run them."""
    max_tokens = options.pop("max_tokens", 2048)
    engine = BatchEngine(model, **options)
    engine.prefill_graphs = PrefillGraphs(
        engine.forward, max_tokens=max_tokens, bucket=8, capture=False
    )
    return engine


def _drain(engine: BatchEngine) -> None:
    for _ in range(10_000):
        if not engine.step():
            return
    raise AssertionError("the engine did not run dry")


@pytest.mark.parametrize("length", [1, 7, 8, 9, 30])
def test_a_padded_whole_prompt_writes_what_the_unpadded_prefill_does(
    model: ChatGLM2, length: int
) -> None:
    prompt = torch.tensor(_prompts([length], seed=length)[0])
    reference = SlotCache(model, max_batch=2, max_seq=32)
    want = Forward(model, reference)([Segment(prompt, 0, 1, logits=True)])
    cache = SlotCache(model, max_batch=2, max_seq=32)
    graphs = PrefillGraphs(Forward(model, cache), bucket=8, capture=False)
    got = graphs(prompt, row=1)
    assert want is not None and got is not None and got.shape == want[0].shape
    torch.testing.assert_close(got, want[0], atol=1e-10, rtol=1e-10)
    rows = slice(0, 2)  # the prompt's row and the untouched one; the scratch row differs
    torch.testing.assert_close(cache.k[:, rows], reference.k[:, rows], atol=1e-12, rtol=0)
    torch.testing.assert_close(cache.v[:, rows], reference.v[:, rows], atol=1e-12, rtol=0)


def test_padded_lengths_stop_at_max_tokens_and_max_seq(model: ChatGLM2) -> None:
    cache = SlotCache(model, max_batch=1, max_seq=30)
    graphs = PrefillGraphs(Forward(model, cache), bucket=8, capture=False)
    assert graphs.max_tokens == 30  # the cache's max_seq caps the default 2,048
    assert [graphs.padded(n) for n in (1, 8, 9, 24, 25, 30)] == [8, 8, 16, 24, 30, 30]
    assert graphs.sizes() == [8, 16, 24, 30]
    assert graphs.fits(30) and not graphs.fits(31) and not graphs.fits(0)
    with pytest.raises(ValueError, match="does not fit"):
        graphs(torch.arange(31), row=0)


def test_an_engine_with_graphed_prompts_gives_one_at_a_time_tokens(model: ChatGLM2) -> None:
    # Prompts of up to 24 tokens go whole through the padded pass (even the 21-token one that
    # arrives while others decode: longer than a chunk, but never cut); the 50-token one is
    # prefilled in eager chunks; rows are reused as requests finish.
    prompts = _prompts([5, 21, 50, 1, 24, 9, 13], seed=3)
    budgets = [12, 3, 7, 12, 1, 12, 5]
    engine = _graphed_engine(model, max_batch=3, max_seq=80, prefill_chunk=16, max_tokens=24)
    requests = [
        engine.submit(p, max_new_tokens=n, stop_ids=[])
        for p, n in zip(prompts[:2], budgets[:2], strict=True)
    ]
    engine.step()
    engine.step()
    requests += [
        engine.submit(p, max_new_tokens=n, stop_ids=[])
        for p, n in zip(prompts[2:], budgets[2:], strict=True)
    ]
    _drain(engine)
    for request, prompt, n in zip(requests, prompts, budgets, strict=True):
        assert request.finish_reason == "length"
        assert request.tokens == _alone(model, prompt, n)
    assert engine.stats.graph_prefills == 6  # all but the 50-token prompt


def test_a_whole_prompt_longer_than_a_chunk_joins_in_one_step(model: ChatGLM2) -> None:
    first, late = _prompts([4, 20], seed=5)
    engine = _graphed_engine(model, max_batch=2, max_seq=64, prefill_chunk=4)
    running = engine.submit(first, max_new_tokens=10, stop_ids=[])
    engine.step()
    joining = engine.submit(late, max_new_tokens=10, stop_ids=[])
    engine.step()
    assert engine.running == 2 and engine.waiting == 0  # 20 tokens at once, not 5 chunks
    assert len(joining.tokens) == 2  # its prefill's token, then this step's decode
    _drain(engine)
    assert running.tokens == _alone(model, first, 10)
    assert joining.tokens == _alone(model, late, 10)


def test_a_failing_graph_turns_graphs_off_and_the_eager_prefill_answers(
    model: ChatGLM2, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = _prompts([6, 11], seed=6)
    engine = _graphed_engine(model, max_batch=2, max_seq=40, prefill_chunk=8)
    assert engine.prefill_graphs is not None

    def broken(*args: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine.prefill_graphs, "_padded", broken)
    requests = [engine.submit(p, max_new_tokens=6, stop_ids=[]) for p in prompts]
    _drain(engine)
    assert not engine.prefill_graphs.enabled and engine.stats.graph_prefills == 0
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(model, prompt, 6)


def test_graphed_prompts_keep_a_ptuning_prefix() -> None:
    config = {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 8, "kv_channels": 16,
              "multi_query_group_num": 2, "ffn_hidden_size": 40, "padded_vocab_size": 50,
              "seq_length": 64, "pre_seq_len": 3, "prefix_projection": True}  # fmt: skip
    tuned = ChatGLM2.from_config(config, dtype=torch.float64)
    randomize(tuned, 4)
    prompts = _prompts([6, 13, 2], seed=4, vocab=50)
    engine = _graphed_engine(tuned, max_batch=2, max_seq=40, prefill_chunk=5)
    requests = [engine.submit(p, max_new_tokens=8, stop_ids=[]) for p in prompts]
    _drain(engine)
    assert engine.stats.graph_prefills == 3
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(tuned, prompt, 8)


def test_a_failure_after_the_replay_fails_only_that_prompt(
    model: ChatGLM2, monkeypatch: pytest.MonkeyPatch
) -> None:
    running_prompt, failing_prompt = _prompts([3, 4], seed=8)
    engine = _graphed_engine(model, max_batch=2, max_seq=40)
    running = engine.submit(running_prompt, max_new_tokens=8, stop_ids=[])
    engine.step()
    real_move = engine.cache.move

    def move(src: int, dst: int, length: int) -> None:
        if src == engine.cache.scratch:  # copying the replayed prompt to its row
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real_move(src, dst, length)

    monkeypatch.setattr(engine.cache, "move", move)
    failing = engine.submit(failing_prompt, max_new_tokens=8, stop_ids=[])
    _drain(engine)
    assert failing.finish_reason == "error" and isinstance(failing.error, torch.OutOfMemoryError)
    assert running.finish_reason == "length"
    assert running.tokens == _alone(model, running_prompt, 8)


def test_a_failing_first_sample_fails_only_its_request(
    model: ChatGLM2, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kbqa.chatglm.batching as batching

    prompts = _prompts([5, 6], seed=9)
    real = batching.sample_rows
    calls = 0

    def flaky(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batching, "sample_rows", flaky)
    with BatchEngine(model, max_batch=2, max_seq=32) as engine:
        first = engine.submit(prompts[0], max_new_tokens=4, stop_ids=[])
        with pytest.raises(RuntimeError, match="probability"):
            first.result(timeout=60)
        second = engine.submit(prompts[1], max_new_tokens=4, stop_ids=[])
        assert second.result(timeout=60) == _alone(model, prompts[1], 4)


def test_prompts_longer_than_the_graphs_prefill_in_eager_chunks(model: ChatGLM2) -> None:
    engine = BatchEngine(model, max_batch=1, max_seq=64, prefill_chunk=8, max_prefill_tokens=16)
    graphs = PrefillGraphs(engine.forward, max_tokens=16, bucket=8, capture=False)
    engine.prefill_graphs = graphs
    prompt = _prompts([30], seed=10)[0]  # longer than a pass may run: eager chunks
    request = engine.submit(prompt, max_new_tokens=3, stop_ids=[])
    _drain(engine)
    assert engine.stats.graph_prefills == 0
    assert request.tokens == _alone(model, prompt, 3)
    assert graphs.graphs == 0
