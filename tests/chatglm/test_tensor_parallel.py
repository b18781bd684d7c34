"""Tensor parallelism: two gloo processes on the CPU compute the single-process model's logits,
prefill and decode through the KV cache; the head/group split and the launcher's errors."""

from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.distributed as dist

from kbqa.chatglm import ChatGLM2, ChatGLM2Config
from kbqa.chatglm.tensor_parallel import ParallelModel, greedy_logits, head_split, launch

PROMPT = [5, 9, 200, 3, 77, 12]
STEPS = 3


def _single_process(
    spec: ParallelModel, steps: int = STEPS
) -> tuple[list[torch.Tensor], list[int]]:
    """The same greedy run with no process group: the unsharded model's logits and tokens."""
    model = spec.build(torch.device("cpu"))
    model.setup_caches(1, len(PROMPT) + steps + 1)
    logits, tokens = [], []
    with torch.no_grad():
        last = model(torch.tensor([PROMPT]), torch.arange(len(PROMPT)), last_logits_only=True)
        for step in range(steps + 1):
            logits.append(last[0, -1])
            if step < steps:
                tokens.append(int(last[0, -1].argmax()))
                position = torch.tensor([len(PROMPT) + step])
                last = model(torch.tensor([[tokens[-1]]]), position)
    return logits, tokens


SPECS = [
    # The tiny preset has 4 heads in 2 key/value groups: each rank one group, as on 6B.
    ParallelModel(config="tiny", seed=3, dtype=torch.float32),
    ParallelModel(config="tiny", seed=4, dtype=torch.float32, quantize="int4"),
]


def _both(rank: int, world: int) -> list[tuple[list[torch.Tensor], list[int]]]:
    """float and int4 in one launch: starting processes is most of the test's time."""
    return [greedy_logits(rank, world, spec, PROMPT, STEPS) for spec in SPECS]


def test_two_gloo_ranks_match_one_process() -> None:
    results = launch(_both, 2, backend="gloo", timeout_s=120)
    for spec, (logits, tokens) in zip(SPECS, results, strict=True):
        want_logits, want_tokens = _single_process(spec)
        assert tokens == want_tokens, spec
        assert len(logits) == STEPS + 1
        for got, want in zip(logits, want_logits, strict=True):
            # Two partial sums added by the all-reduce: fp32 rounding in another order.
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_four_ranks_over_two_groups_replicate_the_key_values() -> None:
    logits, tokens = launch(greedy_logits, 4, SPECS[0], PROMPT, 1, backend="gloo", timeout_s=120)
    want_logits, want_tokens = _single_process(SPECS[0], steps=1)
    assert tokens == want_tokens
    for got, want in zip(logits, want_logits, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_heads_and_key_value_groups_per_rank() -> None:
    six_b = ChatGLM2Config()  # 32 heads, 2 groups
    assert head_split(six_b, 0, 2) == (range(0, 16), range(0, 1))
    assert head_split(six_b, 1, 2) == (range(16, 32), range(1, 2))
    # More ranks than groups: ranks 0 and 1 share group 0, ranks 2 and 3 group 1.
    assert [head_split(six_b, r, 4)[1] for r in range(4)] == [range(0, 1)] * 2 + [range(1, 2)] * 2
    assert head_split(six_b, 3, 4)[0] == range(24, 32)
    with pytest.raises(ValueError, match="3 ranks cannot share 32 heads"):
        head_split(six_b, 0, 3)


def _fails(rank: int, world: int) -> None:
    if rank == 1:
        raise ArithmeticError("rank one breaks")
    dist.barrier()  # rank 0 waits for a peer that is gone (fails, or is ended)


def test_a_failing_rank_is_reported_and_every_process_ends() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 failed.*ArithmeticError: rank one breaks"):
        launch(_fails, 2, backend="gloo", timeout_s=120)


def _dies(rank: int, world: int) -> None:
    if rank == 1:
        os._exit(3)  # killed or out of memory: no traceback, nothing reported
    threading.Event().wait()  # rank 0 is busy for ever (its collective would notice the peer)


def test_a_rank_that_dies_without_reporting_is_noticed_before_the_timeout() -> None:
    # The timeout only bounds a hang: if the dead rank went unnoticed, this would wait it out
    # and raise TimeoutError instead.
    with pytest.raises(RuntimeError, match=r"rank 1: exit status 3"):
        launch(_dies, 2, backend="gloo", timeout_s=300)


def test_shard_refuses_a_prefix_model() -> None:
    from kbqa.chatglm.tensor_parallel import shard

    model = ChatGLM2.from_config({**ChatGLM2Config.from_name("tiny").to_dict(), "pre_seq_len": 4})
    with pytest.raises(ValueError, match="P-tuning"):
        shard(model, 0, 2)
