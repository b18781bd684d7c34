"""The batching engine over two tensor-parallel ranks (gloo, the CPU): this process is rank 0,
as a server is, and rank 1 a process it starts. Concurrent requests get the tokens the
one-process engine gives them, and a rank that dies fails the requests with an error naming
it rather than hanging them."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.parallel_engine import Op, RankLost, follow, start
from kbqa.chatglm.parallel_linear import RowParallelLinear
from kbqa.chatglm.tensor_parallel import ParallelModel, shard

# float64: the all-reduced partial sums round in another order than one process's sums; in
# float64 that cannot move a greedy choice between the tiny random model's logits.
SPEC = ParallelModel(config="tiny", seed=7, dtype=torch.float64)
# Three rows for four requests: one waits and takes a row another left (a row copy on every
# rank); 5-token prefill chunks cut prompts while others decode; look-ahead decode steps run on
# tokens still on the device (broadcast to rank 1 without being read back).
ENGINE: dict[str, Any] = {"max_batch": 3, "max_seq": 64, "prefill_chunk": 5, "look_ahead": True}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's matrices are too small to split
    yield
    torch.set_num_threads(threads)


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, 65024, (n,), generator=g).tolist() for n in (9, 3, 14, 6)]


def test_two_ranks_give_every_request_the_one_process_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    jobs = list(zip(_prompts(), [6, 2, 4, 7], strict=True))  # (prompt, new tokens)
    with BatchEngine(SPEC.build(torch.device("cpu")), **ENGINE) as alone:
        requests = [alone.submit(p, max_new_tokens=n, stop_ids=[]) for p, n in jobs]
        want = [r.result(timeout=60) for r in requests]

    with caplog.at_level(logging.INFO, logger="kbqa.chatglm"):
        engine = start(SPEC.build(torch.device("cpu")), SPEC, 2, **ENGINE)
    # Each rank's memory at start: half the layers' weights, half the KV groups.
    assert "ChatGLM2 over 2 tensor-parallel ranks (gloo): rank 0 on cpu " in caplog.text
    assert "; rank 1 on cpu " in caplog.text and "GiB KV cache" in caplog.text
    try:
        engine.start()
        requests = [engine.submit(p, max_new_tokens=n, stop_ids=[]) for p, n in jobs]
        got = [r.result(timeout=60) for r in requests]
        assert engine.stats.max_running == 3  # they did share the decode steps
        assert engine.stats.steps_ahead > 0
    finally:
        engine.close()
    assert got == want
    assert [p.exitcode for p in engine.followers.processes] == [0]  # told to stop, it left


def test_a_rank_that_dies_fails_the_requests_with_an_error_naming_it() -> None:
    # Room for 500 new tokens: the request is still generating when the kill lands.
    engine = start(SPEC.build(torch.device("cpu")), SPEC, 2, **{**ENGINE, "max_seq": 512})
    try:
        engine.start()
        request = engine.submit(_prompts()[0], max_new_tokens=500, stop_ids=[])
        next(iter(request))  # generating on both ranks
        rank1 = engine.followers.processes[0]
        assert rank1.pid is not None
        os.kill(rank1.pid, signal.SIGKILL)
        with pytest.raises(RankLost, match=r"rank 1 \(exit status -9\) ended"):
            request.result(timeout=60)
        assert request.finish_reason == "error"
        with pytest.raises(RankLost, match="restart the server"):
            engine.submit([5, 6], max_new_tokens=2)
        assert not engine.ready
    finally:
        engine.close()  # returns: nothing waits for the dead rank


def test_a_rank_that_cannot_load_the_model_fails_the_start_with_its_error(
    tmp_path: Path,
) -> None:
    missing = ParallelModel(path=tmp_path / "no-checkpoint", dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"(?s)tensor-parallel rank 1 failed:.*no-checkpoint"):
        start(SPEC.build(torch.device("cpu")), missing, 2, **ENGINE)
    assert not dist.is_initialized()  # this process left the group: a later start can join
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("kbqa-tp")]


def test_int4_slices_go_through_the_fast_forward_as_the_whole_weights() -> None:
    """The fast forward's row-parallel path on quantized weights (packed int4 columns, their
    scales), in a group of one rank, where the all-reduce adds nothing: the tokens of the
    unsharded int4 model, without starting a process."""
    spec = ParallelModel(config="tiny", seed=7, dtype=torch.float32, quantize="int4")
    prompts = _prompts()[:2]

    def tokens(sharded: bool) -> list[list[int]]:
        model = spec.build(torch.device("cpu"))
        if sharded:
            shard(model, 0, 1)
            assert isinstance(
                model.transformer.encoder.blocks()[0].mlp.dense_4h_to_h, RowParallelLinear
            )
        with BatchEngine(model, max_batch=2, max_seq=32) as engine:
            requests = [engine.submit(p, max_new_tokens=5, stop_ids=[]) for p in prompts]
            return [r.result(timeout=60) for r in requests]

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert tokens(sharded=True) == tokens(sharded=False)
    finally:
        dist.destroy_process_group()


def test_a_rank_follows_until_told_to_stop_or_rank_0_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rank side alone (no group needed for calls without token ids): it runs the calls in
    order, logs a call that fails and takes the next (rank 0 failed it too), returns True on
    STOP, and False when rank 0's end closes the pipe, as when the server process exits."""
    engine = BatchEngine(SPEC.build(torch.device("cpu")), max_batch=2, max_seq=16)
    engine.cache.k[:, 0, :, :3] = 1.0  # row 0 holds 3 positions
    for ends_with_stop in (True, False):
        ours, theirs = multiprocessing.Pipe()
        ours.send_bytes(array("q", [Op.COPY_ROW, 0, 7, 3]).tobytes())  # no row 7: fails
        ours.send_bytes(array("q", [Op.COPY_ROW, 0, 1, 3]).tobytes())
        if ends_with_stop:
            ours.send_bytes(array("q", [Op.STOP]).tobytes())
        ours.close()
        with caplog.at_level(logging.ERROR, logger="kbqa.chatglm"):
            assert follow(engine, theirs) is ends_with_stop
        assert "tensor-parallel call COPY_ROW failed" in caplog.text
        assert torch.equal(engine.cache.k[:, 1, :, :3], engine.cache.k[:, 0, :, :3])
        engine.cache.k[:, 1] = 0.0
