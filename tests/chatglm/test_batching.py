"""Continuous batching gives every request exactly the tokens it gets alone.

The reference is `model.generate` (one request at a time) on the same model in float64. The
engine is driven step by step where the test needs to know what runs when (joining mid-batch,
cancelling mid-prefill), and by its own thread where it is used as the server uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from naive_chatglm import randomize

from kbqa.chatglm import ChatGLM2, triton_use
from kbqa.chatglm.batched import DecodeStep, batch_bucket, key_bucket
from kbqa.chatglm.batching import BatchEngine, Request
from kbqa.chatglm.forward import Forward, Segment, SlotCache
from kbqa.chatglm.prefill_graphs import PrefillGraphs
from kbqa.chatglm.sampling import SamplingParams

VOCAB = 65024  # the tiny preset's
NEW = 12


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's matrices are too small to split
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ChatGLM2:
    torch.manual_seed(0)
    return ChatGLM2.from_config("tiny", dtype=torch.float64)


def _prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _alone(model: ChatGLM2, prompt: list[int], max_new: int = NEW, **options: object) -> list[int]:
    options = {"temperature": 0.0, "eos_token_ids": [], **options}
    return list(model.generate(prompt, max_new_tokens=max_new, **options))  # type: ignore[arg-type]


def _drain(engine: BatchEngine) -> None:
    for _ in range(10_000):
        if not engine.step():
            return
    raise AssertionError("the engine did not run dry")


def test_greedy_batch_equals_one_at_a_time_with_queueing(model: ChatGLM2) -> None:
    # Seven requests of different lengths on three rows: four wait, and rows are reused as
    # requests finish at different times; prompts longer than a chunk prefill in pieces.
    prompts = _prompts([5, 33, 1, 70, 9, 24, 50])
    budgets = [NEW, 3, NEW, 7, 1, NEW, 5]
    engine = BatchEngine(model, max_batch=3, max_seq=128, prefill_chunk=16)
    requests = [
        engine.submit(p, max_new_tokens=n, stop_ids=[])
        for p, n in zip(prompts, budgets, strict=True)
    ]
    assert engine.waiting == 7
    running_seen: list[int] = []
    while engine.step():
        running_seen.append(engine.running)
    assert max(running_seen) == 3 == engine.stats.max_running  # never more than max_batch
    for request, prompt, n in zip(requests, prompts, budgets, strict=True):
        assert request.tokens == _alone(model, prompt, n)
        assert request.finish_reason == "length"
    assert engine.stats.prefill_tokens == sum(len(p) for p in prompts)


@pytest.mark.parametrize("look_ahead", [False, True])
def test_requests_joining_mid_batch(model: ChatGLM2, look_ahead: bool) -> None:
    first, late = _prompts([20, 8]), _prompts([45, 3, 12], seed=2)
    engine = BatchEngine(model, max_batch=4, max_seq=96, prefill_chunk=10, look_ahead=look_ahead)
    early = [engine.submit(p, max_new_tokens=30, stop_ids=[]) for p in first]
    for _ in range(8):
        engine.step()
    assert engine.running == 2 and all(r.tokens for r in early)
    joined = [engine.submit(p, max_new_tokens=NEW, stop_ids=[]) for p in late]
    engine.step()
    # The newcomer's prompt (45 tokens) prefills in chunks while the others keep decoding.
    progress = [len(r.tokens) for r in early]
    engine.step()
    assert [len(r.tokens) for r in early] == [n + 1 for n in progress]
    _drain(engine)
    assert all(r.tokens for r in joined)
    assert joined[0].token_times[0] < early[0].token_times[-1]  # it really joined mid-stream
    assert (engine.stats.steps_ahead > 0) == look_ahead
    for request, prompt in zip(early, first, strict=True):
        assert request.tokens == _alone(model, prompt, 30)
    for request, prompt in zip(joined, late, strict=True):
        assert request.tokens == _alone(model, prompt)


def test_prompts_prefill_together_and_rows_are_reused_in_any_order(model: ChatGLM2) -> None:
    # Two decoders; two newcomers prefill in the same passes. The second decoder leaves, a
    # third newcomer takes its row, and the first newcomer (row 2) then finishes: it must
    # take row 1 from the third, which is still prefilling, by swapping their cache rows.
    decoders, newcomers = _prompts([4, 6]), _prompts([30, 9, 41], seed=3)
    engine = BatchEngine(model, max_batch=4, max_seq=96, prefill_chunk=8)
    long = engine.submit(decoders[0], max_new_tokens=40, stop_ids=[])
    short = engine.submit(decoders[1], max_new_tokens=4, stop_ids=[])
    engine.step()  # both prompts prefill together, whole, and both start decoding
    assert engine.running == 2 and engine.stats.prefill_tokens == 10
    a = engine.submit(newcomers[0], max_new_tokens=NEW, stop_ids=[])
    engine.step()  # a takes row 2 and prefills 8 of its 30 tokens
    engine.step()  # 8 more; `short` has its 4 tokens and frees row 1
    assert short.done and engine.running == 1 and engine.waiting == 1
    b = engine.submit(newcomers[2], max_new_tokens=NEW, stop_ids=[])
    c = engine.submit(newcomers[1], max_new_tokens=NEW, stop_ids=[])
    _drain(engine)
    assert engine.stats.row_swaps >= 1
    for request, prompt, n in [
        (long, decoders[0], 40),
        (short, decoders[1], 4),
        (a, newcomers[0], NEW),
        (b, newcomers[2], NEW),
        (c, newcomers[1], NEW),
    ]:
        assert request.tokens == _alone(model, prompt, n)


def test_newcomers_copy_a_shared_prompt_prefix_and_answer_as_alone(model: ChatGLM2) -> None:
    # The same 300 tokens (instructions and passages) before different questions: newcomers
    # copy them from the row that prefilled them and prefill only their own tail.
    (shared,) = _prompts([300], seed=5)
    tails = _prompts([1, 7, 40], seed=6)
    same = [*shared, *tails[1]]  # the first prompt again, whole: all but its last token copied
    early = [*shared[:200], *tails[2]]  # parts from the others before 256 tokens: prefilled
    first = [*shared, *tails[1]]
    engine = BatchEngine(model, max_batch=4, max_seq=400, prefill_chunk=64)
    requests = [engine.submit(first, max_new_tokens=NEW, stop_ids=[])]
    engine.step()  # prefills `first` whole (the only one waiting) and starts decoding it
    prompts = [first, [*shared, *tails[0]], same, early]
    requests += [engine.submit(p, max_new_tokens=NEW, stop_ids=[]) for p in prompts[1:]]
    _drain(engine)
    assert engine.stats.reused_prefix_tokens == 300 + len(same) - 1
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(model, prompt)


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_a_prefill_of_several_segments_matches_the_eager_model(quantize: str | None) -> None:
    """The fast forward (here its torch ops) prefills three sequences in one pass, one of them
    a later piece of its prompt: the caches and logits are the eager model's, one at a time."""
    torch.manual_seed(0)
    tiny = ChatGLM2.from_config("tiny", dtype=torch.float32, quantize=quantize)
    prompts = _prompts([7, 12, 5], seed=4)
    cache = SlotCache(tiny, max_batch=3, max_seq=32)
    forward = Forward(tiny, cache)
    # Row 1's prompt in two pieces: the first alone, the rest together with the others.
    assert forward([Segment(torch.tensor(prompts[1][:4]), 0, 1, logits=False)]) is None
    got = forward(
        [
            Segment(torch.tensor(prompts[0]), 0, 0, logits=True),
            Segment(torch.tensor(prompts[1][4:]), 4, 1, logits=True),
            Segment(torch.tensor(prompts[2]), 0, 2, logits=True),
        ]
    )
    assert got is not None and got.shape == (3, tiny.config.padded_vocab_size)
    for row, prompt in enumerate(prompts):
        tiny.setup_caches(1, 32)
        positions = torch.arange(len(prompt))
        want = tiny(torch.tensor([prompt]), positions, last_logits_only=True)[0, -1]
        torch.testing.assert_close(got[row], want, atol=2e-4, rtol=2e-4)
        for i, block in enumerate(tiny.transformer.encoder.blocks()):
            kv = block.self_attention.kv_cache
            assert kv is not None
            n = len(prompt)
            torch.testing.assert_close(
                cache.k[i, row, :, :n], kv.k_cache[0, :, :n], atol=2e-5, rtol=2e-5
            )
            torch.testing.assert_close(
                cache.v[i, row, :, :n], kv.v_cache[0, :, :n], atol=2e-5, rtol=2e-5
            )


@pytest.fixture
def kernels_that_fail(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The Triton kernels taken to run on the CPU without Triton's interpreter: every launch
    fails there (no GPU driver), as a kernel built for another Triton would on a GPU."""
    if triton_use.interpreted() or not triton_use.triton_installed():
        pytest.skip("needs triton, outside its interpreter")
    monkeypatch.setattr(triton_use, "interpreted", lambda: True)
    monkeypatch.setattr(triton_use, "_turned_off", [])
    yield
    assert triton_use._turned_off  # the failure turned the kernels off


def test_a_failing_kernel_turns_the_kernels_off_and_the_prefill_answers(
    model: ChatGLM2, kernels_that_fail: None
) -> None:
    prompt = torch.tensor(_prompts([11], seed=10)[0])
    reference = SlotCache(model, max_batch=1, max_seq=32)
    triton_use._turned_off.append("for the reference")
    expected = Forward(model, reference)([Segment(prompt, 0, 0, logits=True)])
    triton_use._turned_off.clear()
    cache = SlotCache(model, max_batch=1, max_seq=32)
    got = Forward(model, cache)([Segment(prompt, 0, 0, logits=True)])
    assert got is not None and expected is not None
    assert torch.equal(got, expected)
    assert torch.equal(cache.k, reference.k) and torch.equal(cache.v, reference.v)


def test_a_failing_kernel_turns_the_kernels_off_and_the_decode_answers(
    model: ChatGLM2, kernels_that_fail: None
) -> None:
    cache = SlotCache(model, max_batch=2, max_seq=32)
    step = DecodeStep(model, Forward(model, cache), cuda_graphs=False)
    got = step([7, 8], [0, 0]).clone()
    assert torch.equal(got, step([7, 8], [0, 0]))


def test_a_failing_prefill_pass_fails_only_the_request_that_fails_alone(
    model: ChatGLM2, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok_prompt, bad_prompt = _prompts([6, 9], seed=5)
    engine = BatchEngine(model, max_batch=2, max_seq=32)
    ok = engine.submit(ok_prompt, max_new_tokens=3, stop_ids=[])
    bad = engine.submit(bad_prompt, max_new_tokens=3, stop_ids=[])
    real = engine.prefiller.__call__

    def fussy(segments: list[Segment]) -> torch.Tensor | None:
        if any(s.ids.numel() == len(bad_prompt) for s in segments):
            raise RuntimeError("out of memory")
        return real(segments)

    monkeypatch.setattr(engine, "prefiller", fussy)
    _drain(engine)
    assert bad.finish_reason == "error" and ok.finish_reason == "length"
    assert ok.tokens == _alone(model, ok_prompt, 3)


def test_warm_up_leaves_nothing_that_changes_the_answers(model: ChatGLM2) -> None:
    prompts = _prompts([9, 30, 4], seed=8)
    engine = BatchEngine(model, max_batch=3, max_seq=64, prefill_chunk=8)
    engine.warm_up()
    assert engine.cache.k[:, :3].abs().sum(dim=(0, 2, 4)).count_nonzero() > 0  # it wrote
    assert engine.running == engine.waiting == 0 and engine.stats.steps == 0
    requests = [engine.submit(p, max_new_tokens=NEW, stop_ids=[]) for p in prompts]
    _drain(engine)
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(model, prompt)


def test_an_engine_warms_up_on_its_thread_before_serving(model: ChatGLM2) -> None:
    prompt = _prompts([12], seed=9)[0]
    engine = BatchEngine(model, max_batch=2, max_seq=48, warm_up=True)
    assert not engine.ready  # its thread has not warmed up yet
    assert BatchEngine(model, max_batch=1, max_seq=8).ready  # nothing to warm up
    with engine:
        request = engine.submit(prompt, max_new_tokens=NEW, stop_ids=[])
        assert request.result(timeout=120) == _alone(model, prompt)
        assert engine.ready
        assert engine.cache.k[:, 1].abs().sum() > 0  # only the warm-up wrote into row 1


def test_cancelled_requests_leave_and_the_rest_are_unaffected(model: ChatGLM2) -> None:
    prompts = _prompts([6, 30, 11, 4, 19])
    event = threading.Event()
    engine = BatchEngine(model, max_batch=3, max_seq=64, prefill_chunk=8)
    requests = [engine.submit(prompts[0], max_new_tokens=20, stop_ids=[])]
    engine.step()  # prompt 0 prefills whole (nobody decodes yet) and starts decoding
    requests += [engine.submit(p, max_new_tokens=20, stop_ids=[]) for p in prompts[1:4]]
    by_event = engine.submit(prompts[4], max_new_tokens=20, stop_ids=[], cancel=event)
    engine.step()  # prompts 1 and 2 take the free rows; prompt 1's first chunk runs
    assert engine.running == 1 and engine.stats.prefill_tokens == 6 + 8
    requests[1].cancel()  # mid-prefill
    requests[3].cancel()  # still waiting
    for _ in range(2):
        engine.step()
    requests[0].cancel()  # decoding: its row is taken by another
    event.set()  # the last request, mid-prefill
    _drain(engine)
    for i in (1, 3):
        assert requests[i].finish_reason == "cancelled" and requests[i].tokens == []
    assert requests[0].finish_reason == "cancelled"
    assert 0 < len(requests[0].tokens) < 20
    assert requests[0].tokens == _alone(model, prompts[0], len(requests[0].tokens))
    assert by_event.finish_reason == "cancelled" and by_event.tokens == []
    assert requests[2].finish_reason == "length"
    assert requests[2].tokens == _alone(model, prompts[2], 20)


def test_length_limit_and_stop_ids(model: ChatGLM2) -> None:
    prompts = _prompts([10, 58, 7])
    engine = BatchEngine(model, max_batch=4, max_seq=64, prefill_chunk=32)
    # 58 prompt tokens leave 6 positions of the 64: generation stops there, as generate()
    # stops at the model's seq_length.
    capped = engine.submit(prompts[1], max_new_tokens=50, stop_ids=[])
    reference = _alone(model, prompts[0], 20)
    stop = reference[7]
    stopped = engine.submit(prompts[0], max_new_tokens=20, stop_ids=[stop, 1])
    nothing = engine.submit(prompts[2], max_new_tokens=0)
    assert nothing.done and nothing.tokens == [] and nothing.finish_reason == "length"
    _drain(engine)
    assert capped.finish_reason == "length" and len(capped.tokens) == 64 - 58
    assert capped.tokens == _alone(model, prompts[1], 6)
    assert stopped.finish_reason == "stop"
    assert stopped.tokens == reference[: reference.index(stop)]
    assert stopped.tokens == _alone(model, prompts[0], 20, eos_token_ids=[stop, 1])


@pytest.mark.parametrize("look_ahead", [False, True])
def test_seeded_sampling_and_penalties_match_generate(model: ChatGLM2, look_ahead: bool) -> None:
    prompts = _prompts([9, 26, 3, 14])
    settings = [
        {"temperature": 0.9, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.3, "seed": 5},
        {"temperature": 0.0, "repetition_penalty": 1.5},
        {"temperature": 1.2, "top_p": 1.0, "seed": 7},
        {"temperature": 0.7, "top_k": 3, "seed": 11},
    ]
    engine = BatchEngine(model, max_batch=4, max_seq=64, prefill_chunk=8, look_ahead=look_ahead)
    requests = [
        engine.submit(p, max_new_tokens=NEW, stop_ids=[], params=SamplingParams(**s))  # type: ignore[arg-type]
        for p, s in zip(prompts, settings, strict=True)
    ]
    _drain(engine)
    for request, prompt, s in zip(requests, prompts, settings, strict=True):
        assert request.tokens == _alone(model, prompt, **{"top_p": 1.0, **s})


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_quantized_models_batch_exactly(quantize: str) -> None:
    torch.manual_seed(3)
    small = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16,
             "ffn_hidden_size": 128, "padded_vocab_size": 300}  # fmt: skip
    quantized = ChatGLM2.from_config(small, dtype=torch.float64, quantize=quantize)
    prompts = [[1, *p] for p in _prompts([4, 15, 9], seed=3)]
    prompts = [[i % 300 for i in p] for p in prompts]
    engine = BatchEngine(quantized, max_batch=2, max_seq=48, prefill_chunk=6)
    requests = [engine.submit(p, max_new_tokens=10, stop_ids=[]) for p in prompts]
    _drain(engine)
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(quantized, prompt, 10)


def test_a_ptuning_prefix_is_in_every_row() -> None:
    config = {"num_layers": 2, "hidden_size": 48, "num_attention_heads": 8, "kv_channels": 16,
              "multi_query_group_num": 2, "ffn_hidden_size": 40, "padded_vocab_size": 50,
              "seq_length": 64, "pre_seq_len": 3, "prefix_projection": True}  # fmt: skip
    tuned = ChatGLM2.from_config(config, dtype=torch.float64)
    randomize(tuned, 4)
    prompts = [[i % 50 for i in p] for p in _prompts([6, 13, 2], seed=4)]
    engine = BatchEngine(tuned, max_batch=2, max_seq=40, prefill_chunk=5)
    requests = [engine.submit(p, max_new_tokens=8, stop_ids=[]) for p in prompts]
    _drain(engine)
    for request, prompt in zip(requests, prompts, strict=True):
        assert request.tokens == _alone(tuned, prompt, 8)


def test_the_engine_thread_serves_concurrent_streams(model: ChatGLM2) -> None:
    prompts = _prompts([12, 3, 40, 25, 8, 17])
    got: dict[int, list[int]] = {}
    engine = BatchEngine(model, max_batch=4, max_seq=80, prefill_chunk=16)

    def user(i: int) -> None:
        request = engine.submit(prompts[i], max_new_tokens=NEW, stop_ids=[])
        got[i] = list(request)  # streams token by token from the engine thread

    with engine:
        users = [threading.Thread(target=user, args=(i,)) for i in range(len(prompts))]
        for u in users:
            u.start()
        for u in users:
            u.join(timeout=60)
        # A consumer that stops listening cancels its request.
        quitter = engine.submit(prompts[0], max_new_tokens=60, stop_ids=[])
        for _ in quitter:
            break
        assert quitter.cancelled
        leftover = engine.submit(prompts[1], max_new_tokens=60, stop_ids=[])
    assert leftover.done and leftover.finish_reason in ("cancelled", "length")
    for i, prompt in enumerate(prompts):
        assert got[i] == _alone(model, prompt)
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(prompts[0])


def test_engine_errors_reach_the_stream(model: ChatGLM2, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = BatchEngine(model, max_batch=2, max_seq=32)
    request = engine.submit([5, 6, 7], max_new_tokens=4, stop_ids=[])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine.forward, "prefill", broken)
    engine.step()
    assert request.finish_reason == "error"
    with pytest.raises(RuntimeError, match="out of memory"):
        list(request)
    assert engine.waiting == 0 and engine.running == 0


def test_bad_requests_are_refused(model: ChatGLM2) -> None:
    engine = BatchEngine(model, max_batch=2, max_seq=32)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([])
    with pytest.raises(ValueError, match="token ids"):
        engine.submit([VOCAB])
    with pytest.raises(ValueError, match="no room"):
        engine.submit(list(range(3, 35)))
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="seq_length"):
        BatchEngine(model, max_seq=model.config.seq_length + 1)


def test_buckets_and_cache_bounds(model: ChatGLM2) -> None:
    assert [batch_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 17, 64)] == [1, 2, 4, 8, 8, 16, 24, 64]
    assert batch_bucket(13, 12) == 12
    assert [key_bucket(n, 10_000) for n in (1, 256, 257, 2100, 4097)] == [256, 256, 512, 2304, 4608]
    assert key_bucket(900, 600) == 600
    cache = SlotCache(model, max_batch=3, max_seq=100)
    cfg = model.config
    # k and v for three rows and the scratch row: the memory bound is rows × positions.
    per_position = 2 * cfg.num_layers * cfg.kv_groups * cfg.kv_channels * 8  # float64
    assert cache.nbytes == 4 * 100 * per_position


def test_request_iteration_reports_what_the_engine_did() -> None:
    request = Request([1], 3, SamplingParams(), frozenset(), None, None)
    request._emit(4)
    request._emit(9)
    request._finish("stop")
    assert list(request) == [4, 9] and request.result() == [4, 9]
    assert len(request.token_times) == 2


class _FussyGraphs(PrefillGraphs):
    """Fails the prompts holding id 2, as an error escaping the graphed prefill would."""

    def __call__(self, prompt: torch.Tensor, row: int) -> torch.Tensor | None:
        if bool((prompt == 2).any()):
            raise RuntimeError("out of memory")
        return super().__call__(prompt, row)


@pytest.mark.parametrize(("graphed", "look_ahead"), [(False, False), (True, True)])
def test_randomized_schedule_gives_every_request_its_one_at_a_time_tokens(
    model: ChatGLM2, monkeypatch: pytest.MonkeyPatch, graphed: bool, look_ahead: bool
) -> None:
    """Many requests on few rows, submitted and cancelled at random steps, with random prompt
    lengths, budgets, sampling settings, stop ids that can end a request at its first token, and
    prompts whose prefill fails alone (forcing the one-by-one fallback, swaps included): each
    request gets exactly its one-at-a-time tokens (a prefix of them when cancelled). `graphed`:
    whole prompts of up to 16 tokens go through the padded pass that CUDA graphs replay (run
    eagerly here), the longer ones through the prefill in chunks. `look_ahead`: each decode
    step is queued before the last one's tokens are read back, and dropped when rows change
    (on CUDA the default)."""
    rng = torch.Generator().manual_seed(12)

    def rand(n: int) -> int:
        return int(torch.randint(n, (1,), generator=rng))

    engine = BatchEngine(
        model, max_batch=3, max_seq=48, prefill_chunk=5, max_prefill_tokens=11,
        look_ahead=look_ahead,
    )  # fmt: skip
    if graphed:
        engine.prefill_graphs = _FussyGraphs(engine.forward, max_tokens=16, bucket=8, capture=False)
    real = engine.prefiller

    def fussy(segments: list[Segment]) -> torch.Tensor | None:
        if any(bool((s.ids == 2).any()) for s in segments):  # id 2 marks a failing prompt
            raise RuntimeError("out of memory")
        return real(segments)

    monkeypatch.setattr(engine, "prefiller", fussy)
    cases: list[tuple[Request, list[int], int, dict[str, object], int | None]] = []
    cancel_at: dict[int, int] = {}
    step = 0
    for i in range(40):
        prompt = _prompts([1 + rand(30)], seed=100 + i)[0]
        bad = rand(8) == 0
        if bad:
            prompt[rand(len(prompt))] = 2
        budget = 1 + rand(10)
        settings: dict[str, object] = {"temperature": 0.0, "top_p": 1.0}
        if rand(2):
            settings = {"temperature": 0.8, "top_p": 0.9, "top_k": 50, "seed": rand(1000)}
        if rand(3) == 0:
            settings["repetition_penalty"] = 1.4
        stop = None
        if not bad and rand(4) == 0:  # stop at one of its own tokens (maybe the first)
            stop = _alone(model, prompt, budget, **settings)[rand(budget)]
        request = engine.submit(
            prompt,
            max_new_tokens=budget,
            stop_ids=[stop] if stop is not None else [],
            params=SamplingParams(**settings),  # type: ignore[arg-type]
        )
        cases.append((request, prompt, budget, settings, stop))
        if rand(5) == 0:
            cancel_at[i] = step + rand(8)
        for _ in range(rand(3)):
            step += 1
            for j, at in cancel_at.items():
                if at == step:
                    cases[j][0].cancel()
            engine.step()
    _drain(engine)
    assert engine.running == engine.waiting == 0
    assert engine.stats.graph_prefills > 0 if graphed else engine.stats.row_swaps > 0
    for request, prompt, budget, settings, stop in cases:
        if 2 in prompt:
            assert request.finish_reason in ("error", "cancelled") and request.tokens == []
            continue
        eos = [stop] if stop is not None else []
        want = _alone(model, prompt, budget, **settings, eos_token_ids=eos)
        if request.finish_reason == "cancelled":
            assert request.tokens == want[: len(request.tokens)]
        else:
            assert request.tokens == want, (
                len(prompt),
                budget,
                settings,
                stop,
                request.finish_reason,
            )
            assert request.finish_reason == ("stop" if len(want) < budget else "length")


def test_a_seed_torch_cannot_take_is_refused_at_submit(model: ChatGLM2) -> None:
    # Made on the engine thread, its generator would raise there: the request lost (never
    # finished) and every other request failed with it.
    engine = BatchEngine(model, max_batch=2, max_seq=32)
    with pytest.raises(ValueError, match="seed"):
        engine.submit([5, 6], params=SamplingParams(temperature=1.0, seed=2**64))
    assert engine.waiting == 0


def test_a_failing_callback_ends_only_its_own_request(model: ChatGLM2) -> None:
    prompts = _prompts([7, 12, 5], seed=13)
    engine = BatchEngine(model, max_batch=3, max_seq=48, prefill_chunk=4)
    good = engine.submit(prompts[0], max_new_tokens=NEW, stop_ids=[])

    def on_token(token: int) -> None:
        raise RuntimeError("the client went away")

    def cancel() -> bool:
        raise RuntimeError("the cancel check broke")

    engine.step()
    loud = engine.submit(prompts[1], max_new_tokens=NEW, stop_ids=[], on_token=on_token)
    broken = engine.submit(prompts[2], max_new_tokens=NEW, stop_ids=[], cancel=cancel)
    _drain(engine)
    assert good.finish_reason == "length" and good.tokens == _alone(model, prompts[0])
    assert loud.finish_reason == "error" and len(loud.tokens) == 1
    with pytest.raises(RuntimeError, match="went away"):
        loud.result()
    assert broken.finish_reason == "cancelled" and broken.tokens == []


def test_warm_up_fits_a_short_max_seq(model: ChatGLM2) -> None:
    engine = BatchEngine(model, max_batch=2, max_seq=8, prefill_chunk=4)
    engine.warm_up()  # its pieces, two prompts in one pass included, fit in 8 positions
    request = engine.submit([5, 6, 7], max_new_tokens=4, stop_ids=[])
    _drain(engine)
    assert request.tokens == _alone(model, [5, 6, 7], 4)
